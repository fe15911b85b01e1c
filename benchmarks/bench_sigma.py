"""Is the Cs sigma honest on RELION's data? (figures, not a test)

For each seed, RELION's tools make a data set with the right nominal Cs (relion_project images,
true Cs 2.7 mm, 1.1 Å, white noise 4; half maps from relion_reconstruct), and csrefine refines
it twice: against relion_reconstruct's half maps, and against the noise-free map the images were
projected from (as both references, with a 1e-4 rms difference so that they are two files). It
prints z = (Cs - truth) / sigma per seed and, per kind of reference, the mean and rms of z: an
unbiased estimate with an honest sigma has mean 0 and rms 1 (within about 1/sqrt(seeds)).

  python benchmarks/bench_sigma.py --seeds 8 --box 128 --n 4000 --out /tmp/bench_sigma
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
from common import MODEL, log, z_summary
from relion_tools import simulate_dataset

from csrefine.options import RefineOptions
from csrefine.relion.run import run

CS_TRUE = 2.7


def true_map_pair(d: Path, seed: int) -> tuple[Path, Path]:
    """The projected map twice, with a 1e-4 rms difference (identical half maps are refused)."""
    volume = mrcfile.read(d / "map_true.mrc")
    rng = np.random.default_rng(seed)
    paths = (d / "true_a.mrc", d / "true_b.mrc")
    for path in paths:
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data((volume + rng.normal(0, 1e-4 * volume.std(), volume.shape))
                         .astype(np.float32))
            mrc.voxel_size = 1.1
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_sigma"))
    args = ap.parse_args()
    structure = gemmi.read_structure(str(MODEL))
    z = {"relion_reconstruct": [], "noise-free map": []}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        d = simulate_dataset(args.out / f"seed{seed}", structure, n=args.n, cs_true_mm=CS_TRUE,
                             cs_nominal_mm=CS_TRUE, box=args.box, pixel_nominal_A=1.1, seed=seed)
        for kind, halves in (("relion_reconstruct", (d["half1"], d["half2"])),
                             ("noise-free map", true_map_pair(d["dir"], seed))):
            job = args.out / f"seed{seed}_{kind.split()[0]}"
            run(d["star"], *halves, job, mask=d["mask"], options=RefineOptions(threads=2),
                base_dir=d["dir"])
            g = json.loads((job / "csrefine.json").read_text())["groups"][0]
            z[kind].append((g["cs_refined_mm"] - CS_TRUE) / g["cs_sigma_mm"])
            log(f"seed {seed}, {kind} half maps: {g['cs_refined_mm']:.4f} ± "
                f"{g['cs_sigma_mm']:.4f} mm, z {z[kind][-1]:+.2f}")
    for kind, values in z.items():
        log(f"{kind}: {z_summary(values)}")


if __name__ == "__main__":
    main()
