"""Reading (and updating) a large particle STAR file: csrefine's reader against starfile.

Generates a RELION-layout particle STAR (RELION 3.1's table layout: right-aligned fields, rows
starting with spaces; ``--rows`` rows of 25 columns, one optics group), then, each in a fresh
process, times and takes the peak RSS of

* ``read``: ``csrefine.relion.star_io.read_particle_star``,
* ``starfile``: ``starfile.read`` (every block as pandas tables),
* ``write``: ``read_particle_star`` then ``write_updated_star`` with a new Cs and defocus
  offset (time of the write only; peak RSS of the whole process).

``baseline`` is the peak RSS of a process that only imports what the reader imports.

  python benchmarks/bench_star_read.py --rows 1000000 --file /tmp/big.star
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit", "rlnClassNumber",
           "rlnAnglePsi", "rlnImageName", "rlnMicrographName", "rlnOpticsGroup",
           "rlnCtfMaxResolution", "rlnCtfFigureOfMerit", "rlnDefocusU", "rlnDefocusV",
           "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift",
           "rlnAngleRot", "rlnAngleTilt", "rlnOriginXAngst", "rlnOriginYAngst",
           "rlnNormCorrection", "rlnLogLikeliContribution", "rlnMaxValueProbDistribution",
           "rlnNrOfSignificantSamples", "rlnRandomSubset")

OPTICS_COLUMNS = ("rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographPixelSize", "rlnVoltage",
                  "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
                  "rlnImageSize", "rlnImageDimensionality")
OPTICS_ROW = ("opticsGroup1", 1, "1.100000", "300.000000", "2.700000", "0.100000", "1.100000",
              128, 2)


def header(block: str, columns) -> str:
    """A table's header as RELION writes it (labels with a trailing space)."""
    return (f"\n# version 30001\n\ndata_{block}\n\nloop_ \n"
            + "".join(f"_{c} #{i + 1} \n" for i, c in enumerate(columns)))


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """A RELION-layout particle STAR of ``rows`` rows (values random but plausible)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        fh.write(header("optics", OPTICS_COLUMNS))
        fh.write(" ".join(f"{v:>12}" for v in OPTICS_ROW) + " \n \n\n")
        fh.write(header("particles", COLUMNS))
        block = 10000
        for start in range(0, rows, block):
            n = min(block, rows - start)
            r = rng.uniform(size=(n, 17))
            lines = []
            for i in range(n):
                k = start + i
                mic = f"MotionCorr/job002/Movies/FoilHole_{k // 300:08d}_Data_20200101_fractions.mrc"
                image = f"{k % 300 + 1:06d}@Extract/job012/Movies/FoilHole_{k // 300:08d}_Data.mrcs"
                v = r[i]
                fields = (f"{v[0] * 4000:12.6f}", f"{v[1] * 4000:12.6f}", f"{v[2]:12.6f}",
                          f"{1:12d}", f"{v[3] * 360 - 180:12.6f}", f"{image:>12}", f"{mic:>12}",
                          f"{1:12d}", f"{v[4] * 5 + 3:12.6f}", f"{v[5] * 0.2:12.6f}",
                          f"{v[6] * 20000 + 5000:12.6f}", f"{v[6] * 20000 + 4900:12.6f}",
                          f"{v[7] * 180:12.6f}", f"{0:12.6f}", f"{1:12.6f}", f"{0:12.6f}",
                          f"{v[8] * 360 - 180:12.6f}", f"{v[9] * 180:12.6f}",
                          f"{v[10] * 6 - 3:12.6f}", f"{v[11] * 6 - 3:12.6f}",
                          f"{v[12] + 0.5:12.6f}", f"{v[13] * 1e5:12.6e}", f"{v[14]:12.6f}",
                          f"{int(v[15] * 100):12d}", f"{1 + (k % 2):12d}")
                lines.append(" ".join(fields) + " \n")
            fh.write("".join(lines))
        fh.write(" \n\n")


MEASURE = {
    "baseline": "import numpy, csrefine.relion.star_io",
    "read": "from csrefine.relion.star_io import read_particle_star\n"
            "t0 = time.perf_counter(); s = read_particle_star(PATH); t = time.perf_counter() - t0\n"
            "assert len(s.particles) == ROWS",
    "starfile": "import starfile\n"
                "t0 = time.perf_counter(); b = starfile.read(PATH, always_dict=True)\n"
                "t = time.perf_counter() - t0\nassert len(b['particles']) == ROWS",
    "write": "from csrefine.relion.star_io import read_particle_star, write_updated_star\n"
             "s = read_particle_star(PATH)\nt0 = time.perf_counter()\n"
             "write_updated_star(s, PATH + '.out.star', {1: 2.9}, {1: 50.0}, {})\n"
             "t = time.perf_counter() - t0",
}


def measure(kind: str, path: Path, rows: int) -> dict:
    """Seconds and peak RSS (MiB) of one measurement, in a fresh process."""
    code = ("import resource, time\nt = 0.0\nPATH, ROWS = " + repr(str(path)) + f", {rows}\n"
            + MEASURE[kind] + "\nimport json; print(json.dumps({'s': t, 'peak_MiB': "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--file", type=Path, default=Path("/tmp/bench_star_read.star"))
    p.add_argument("--kinds", default="baseline,read,starfile,write")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    if not args.file.is_file():
        generate(args.file, args.rows)
    print(f"{args.file}: {args.file.stat().st_size / 1e6:.0f} MB, {args.rows} rows, "
          f"{len(COLUMNS)} columns", flush=True)
    for kind in args.kinds.split(","):
        for _ in range(args.repeat):
            r = measure(kind, args.file, args.rows)
            print(f"{kind:9s} {r['s']:7.2f} s   peak RSS {r['peak_MiB']:7.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
