"""Benchmark csrefine against RELION's relion_ctf_refine --fit_aberr on the same simulated data.

Data (cached under benchmarks/data/, git-ignored):
  * a map of the 1BD2 atomic model (csrefine.atomic_map.density_map);
  * particles simulated by ``relion_project --ctf --add_noise --white_noise`` with the *true* Cs
    (default 3.0 mm) written in the STAR used for the projection;
  * ``parts.star``: the same particles stating the *nominal* Cs (default 2.7 mm), with
    rlnMicrographName and rlnRandomSubset, which both programs refine;
  * half maps from ``relion_reconstruct --ctf --subset 1|2`` of parts.star, a soft spherical mask
    and ``relion_postprocess`` (the FSC STAR that relion_ctf_refine needs).

Runs, one after the other, with the same thread count, each as a subprocess under
``/usr/bin/time -v`` (wall time and peak resident memory; resource.getrusage otherwise):
  * ``relion_ctf_refine --i parts.star --f postprocess.star --o CtfRefine/ --fit_aberr --j T``;
    its Cs is nominal + 6 c / ((pi/2) lambda^3 1e7) with c the rlnEvenZernike Z4^0 coefficient
    (index 6);
  * ``python -m csrefine.cli refine --particles parts.star --half-maps H1 H2 --mask M --out DIR
    --j T``
    (csrefine's command line, including its JSON/STAR/PDF outputs), Cs from csrefine.json.

Examples:
  python benchmarks/bench_ctf_refine.py                    # 10k particles, box 128, 2 threads
  python benchmarks/bench_ctf_refine.py --box 256
  python benchmarks/bench_ctf_refine.py --metadata-only-scale 1000000   # memory scaling
See benchmarks/README.md for expected times and measured figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, REPO, log, repo_env, warm_up  # noqa: E402

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def random_rows(n: int, rng: np.random.Generator, micrographs: int):
    """Particle parameters in RELION columns (uniform orientations, astigmatic defoci)."""
    from relion_tools import particle_table

    from csrefine.simulate import random_particles

    parts = random_particles(n, rng, astigmatism_A=500.0, max_origin_A=3.0)
    return particle_table(parts, "none.mrcs", micrographs=micrographs)


def optics(cs_mm: float, px: float, box: int, voltage: float):
    from relion_tools import optics_table

    from csrefine.model import OpticsGroup

    return optics_table([OpticsGroup(1, "opticsGroup1", voltage, cs_mm, 0.1, px, box)])


def model_structure(chains: str | None = None):
    """The 1BD2 model (TCR-peptide-MHC, ~95 kDa), or only the named chains (e.g. "ABC": the
    peptide-MHC HLA-A2 / beta-2-microglobulin / peptide, ~45 kDa, a different protein)."""
    import gemmi

    st = gemmi.read_structure(str(MODEL))
    if chains:
        for model in st:
            for name in [ch.name for ch in model if ch.name not in chains]:
                model.remove_chain(name)
        st.setup_entities()
    return st


def make_data(d: Path, n: int, box: int, px: float, cs_true: float, cs_nominal: float,
              voltage: float, snr: float, seed: int, chains: str | None = None) -> dict:
    """Simulate (or reuse) the data set in ``d``; returns its paths. ``chains``: the model's
    chains to use (all by default)."""
    import starfile
    from relion_tools import postprocess, project, reconstruct_half

    from csrefine.atomic_map import density_map
    from csrefine.fsc import soft_spherical_mask
    from csrefine.images import write_map

    paths = {"dir": d, "star": d / "parts.star", "half1": d / "run_half1_class001_unfil.mrc",
             "half2": d / "run_half2_class001_unfil.mrc", "mask": d / "mask.mrc",
             "postprocess": d / "PostProcess/postprocess.star"}
    if all(p.exists() for p in paths.values()):
        log(f"reusing cached data in {d}")
        return paths
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    vol = density_map(model_structure(chains), box, px, b_factor_A2=20.0)
    write_map(d / "map.mrc", vol, px)
    # White noise per pixel for the requested SNR (signal variance of a projection inside the box).
    proj = vol.sum(axis=0)
    sigma = float(np.sqrt(proj.var() / snr))
    rows = random_rows(n, rng, micrographs=max(1, n // 100))
    starfile.write({"optics": optics(cs_true, px, box, voltage), "particles": rows},
                   d / "true_cs.star", overwrite=True)
    log(f"relion_project --ctf of {n} particles, box {box}, Cs {cs_true} mm, white noise "
        f"sigma {sigma:.3g} (SNR {snr})")
    out_star = project("map.mrc", "true_cs.star", "proj", px, white_noise=sigma, cwd=d)
    names = starfile.read(out_star, always_dict=True)["particles"]["rlnImageName"].to_numpy()
    rows["rlnImageName"] = names
    starfile.write({"optics": optics(cs_nominal, px, box, voltage), "particles": rows},
                   paths["star"], overwrite=True)
    for h in (1, 2):
        log(f"relion_reconstruct --ctf --subset {h}")
        reconstruct_half("parts.star", paths[f"half{h}"].name, h, cwd=d)
    write_map(paths["mask"], soft_spherical_mask(box, 0.4 * box - 6), px)
    log("relion_postprocess")
    postprocess(paths["half1"].name, paths["mask"].name, "PostProcess/postprocess", px, cwd=d)
    log(f"data ready in {time.monotonic() - t0:.0f} s")
    return paths


def scaled_star(paths: dict, rows: int) -> Path:
    """A STAR of ``rows`` particles that re-uses the stack of parts.star (metadata scaling)."""
    import starfile

    out = paths["dir"] / f"parts_x{rows}.star"
    if out.exists():
        return out
    blocks = starfile.read(paths["star"], always_dict=True)
    table = blocks["particles"]
    reps = int(np.ceil(rows / len(table)))
    big = table.iloc[np.tile(np.arange(len(table)), reps)[:rows]].reset_index(drop=True)
    big["rlnMicrographName"] = [f"mic{i // 100:05d}.mrc" for i in range(rows)]
    big["rlnRandomSubset"] = (np.arange(rows) % 2) + 1
    log(f"writing {out.name} ({rows} rows re-using {len(table)} images)")
    starfile.write({"optics": blocks["optics"], "particles": big}, out, overwrite=True)
    return out


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------

def timed(cmd: list, cwd: Path, env=None, log_path: Path | None = None) -> dict:
    """Run ``cmd``; wall time (s) and peak RSS (MiB) of the process tree's largest process."""
    time_bin = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    full = ([time_bin, "-v"] if time_bin else []) + [str(c) for c in cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = proc.stdout + proc.stderr
    if log_path is not None:
        log_path.write_text(text)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{text[-3000:]}")
    rss = None
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        rss = int(m.group(1)) / 1024
    elif after.ru_maxrss > before.ru_maxrss:
        rss = after.ru_maxrss / 1024
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "peak_rss_mib": rss, "cpu_s": cpu, "output": text,
            "load_1min": [load_before, os.getloadavg()[0]]}


def relion_cs(star_path: Path, cs_nominal: float, voltage: float) -> float:
    import starfile

    from csrefine.ctf import cs_phase_factor, electron_wavelength_A

    opt = starfile.read(star_path, always_dict=True)["optics"]
    if "rlnEvenZernike" not in opt.columns:
        return float("nan")
    coeffs = [float(x) for x in str(opt["rlnEvenZernike"].iloc[0]).strip("[]").split(",")]
    c = coeffs[6] if len(coeffs) > 6 else 0.0
    return cs_nominal + 6.0 * c / cs_phase_factor(electron_wavelength_A(voltage))


def run_relion(paths: dict, star: Path, threads: int, tag: str, cs_nominal: float,
               voltage: float) -> dict:
    out = paths["dir"] / f"CtfRefine_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = ["relion_ctf_refine", "--i", star.name, "--f",
           paths["postprocess"].relative_to(paths["dir"]), "--o", f"{out.name}/", "--fit_aberr",
           "--j", threads]
    log("running " + " ".join(map(str, cmd)))
    res = timed(cmd, paths["dir"], log_path=out / "bench.log")
    res["cs_mm"] = relion_cs(out / "particles_ctf_refine.star", cs_nominal, voltage)
    return res


def run_csrefine(paths: dict, star: Path, threads: int, tag: str, device: str) -> dict:
    out = paths["dir"] / f"csrefine_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    env = repo_env()
    cmd = [sys.executable, "-m", "csrefine.cli", "refine", "--particles", star.name, "--half-maps",
           paths["half1"].name, paths["half2"].name, "--mask", paths["mask"].name, "--out",
           out.name, "--j", threads, "--device", device]
    log("running " + " ".join(map(str, cmd[1:])))
    res = timed(cmd, paths["dir"], env=env)
    (out / "bench.log").write_text(res["output"])
    report = json.loads((out / "csrefine.json").read_text())
    res["cs_mm"] = float(report["groups"][0]["cs_refined_mm"])
    res["timings"] = report.get("timings_s", {})
    res["backend"] = report.get("backend")
    return res


# --------------------------------------------------------------------------------------------

def data_set_dir(root: Path, n: int, box: int, px: float, cs_true: float, seed: int,
                 voltage: float, chains: str | None = None) -> Path:
    """Where a simulated data set is cached: one name for every benchmark (bench_suite.py's
    sets are re-used here)."""
    part = f"_chains{chains}" if chains else ""
    return root / f"n{n}_box{box}_px{px:g}_cs{cs_true:g}_seed{seed}{part}_{voltage:g}kV"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000, help="particles simulated (default 10000)")
    p.add_argument("--box", type=int, default=128, help="box size (default 128)")
    p.add_argument("--px", type=float, default=None,
                   help="pixel size, A (default 1.0 for box <= 128, else 128/box)")
    p.add_argument("--j", type=int, default=2, help="threads for both programs (default 2)")
    p.add_argument("--cs-true", type=float, default=3.0)
    p.add_argument("--cs-nominal", type=float, default=2.7)
    p.add_argument("--voltage", type=float, default=300.0)
    p.add_argument("--snr", type=float, default=0.05, help="per-image SNR of the simulation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="csrefine --device (cpu, cuda)")
    p.add_argument("--metadata-only-scale", type=int, default=0, metavar="ROWS",
                   help="also run on a STAR of ROWS rows re-using the simulated stack")
    p.add_argument("--relion-on-scaled", action="store_true",
                   help="run relion_ctf_refine on the scaled STAR too (slow: ~RELION's 10k time "
                        "x ROWS/n)")
    p.add_argument("--skip-relion", action="store_true")
    p.add_argument("--skip-csrefine", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each program")
    p.add_argument("--data-dir", default=str(REPO / "benchmarks/data"))
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    px = args.px or (1.0 if args.box <= 128 else 128.0 / args.box)
    d = data_set_dir(Path(args.data_dir), args.n, args.box, px, args.cs_true, args.seed,
                     args.voltage)
    paths = make_data(d, args.n, args.box, px, args.cs_true, args.cs_nominal, args.voltage,
                      args.snr, args.seed)
    runs = []
    sets = [("n%d" % args.n, paths["star"], args.n, True)]
    if args.metadata_only_scale:
        sets.append((f"rows{args.metadata_only_scale}",
                     scaled_star(paths, args.metadata_only_scale),
                     args.metadata_only_scale, args.relion_on_scaled))
    if not args.skip_csrefine:
        warm_up(args.device)
    for tag, star, rows, with_relion in sets:
        for _rep in range(args.repeat):
            if with_relion and not args.skip_relion:
                r = run_relion(paths, star, args.j, tag, args.cs_nominal, args.voltage)
                runs.append({"program": "relion_ctf_refine", "set": tag, "rows": rows, **r})
                log(f"RELION  {tag}: {r['wall_s']:.2f} s, peak {r['peak_rss_mib']:.0f} MiB, "
                    f"Cs {r['cs_mm']:.4f} mm")
            if not args.skip_csrefine:
                r = run_csrefine(paths, star, args.j, tag, args.device)
                runs.append({"program": "csrefine", "set": tag, "rows": rows, **r})
                log(f"csrefine {tag}: {r['wall_s']:.2f} s, peak {r['peak_rss_mib']:.0f} MiB, "
                    f"Cs {r['cs_mm']:.4f} mm; inner timings "
                    + ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items()))
    print()
    print(f"box {args.box}, pixel {px:g} A, {args.n} simulated particles, true Cs "
          f"{args.cs_true} mm, nominal {args.cs_nominal} mm, --j {args.j}, "
          f"{os.cpu_count()} CPUs")
    head = f"{'program':<18} {'set':<12} {'rows':>8} {'wall s':>8} {'particles/s':>12} " \
           f"{'peak MiB':>9} {'Cs mm':>8} {'CPU s':>7} {'load':>9}"
    print(head)
    print("-" * len(head))
    for r in runs:
        rss = f"{r['peak_rss_mib']:.0f}" if r["peak_rss_mib"] else "-"
        print(f"{r['program']:<18} {r['set']:<12} {r['rows']:>8} {r['wall_s']:>8.2f} "
              f"{r['rows'] / r['wall_s']:>12.0f} {rss:>9} {r['cs_mm']:>8.4f} {r['cpu_s']:>7.1f} "
              f"{r['load_1min'][0]:>4.1f}-{r['load_1min'][1]:<4.1f}")
    print("(load: 1-minute load average before and after the run; other work on the machine "
          "slows both programs)")
    by = {}
    for r in runs:
        by.setdefault((r["program"], r["set"]), []).append(r["wall_s"])
    for tag, *_ in sets:
        if ("relion_ctf_refine", tag) in by and ("csrefine", tag) in by:
            ratio = min(by[("csrefine", tag)]) / min(by[("relion_ctf_refine", tag)])
            print(f"{tag}: csrefine / RELION wall time = {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "output"} for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
