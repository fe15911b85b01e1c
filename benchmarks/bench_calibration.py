"""Benchmark: tell a pixel-size error from a Cs error with an atomic model.

Two data sets of the 1BD2 model (~95 kDa) are simulated with RELION 3.1's relion_project and
reconstructed with relion_reconstruct; the Cs is refined with csrefine's core
(:func:`csrefine.pipeline.refine`) and the pixel size calibrated against the docked model
(:func:`csrefine.calibrate.calibrate_pixel_size`), then combined (:func:`apply_calibration`).

  A "pixel": the true pixel size is 2% larger than nominal (p_true = 1.02 p_nom), Cs right (2.7 mm).
     The map of the model is built at p_true (the true object sampled at p_true) and projected
     by relion_project with a STAR stating the *true* optics (pixel p_true, Cs 2.7 mm, true defoci),
     so the images are physically right. The STAR the programs see states p_nom (optics table and
     the stack headers) and the defoci a CTF fit at p_nom returns, defocus*(p_nom/p_true)^2
     (origins in A rescaled by p_nom/p_true). The refined Cs is then the apparent
     2.7*(p_nom/p_true)^4 = 2.49 mm.
     Checks: calibrated pixel within 0.2% of p_true; Cs at the calibrated pixel within 0.03 mm of
     2.7 mm; verdict "pixel size".
  B "cs": pixel size right, true Cs 3.0 mm, nominal 2.7 mm.
     Checks: calibrated pixel within 0.2% of nominal; Cs at the calibrated pixel within 0.03 mm of
     3.0 mm; verdict "Cs".

The model is docked at the nominal pixel size: its centroid sits on the map's centre voxel box//2
(coordinates in A = voxel * p_nom), its geometry is the true one.

Data are cached in benchmarks/data/calibration_<case>_<box>_<n>/ (git-ignored); --fresh rebuilds.
Default: box 128, p_nom 1.25 A, 16000 particles, per-image SNR 0.5, 2 threads (the Cs must be
known to well under 0.03 mm for the check to mean something: sigma ~0.002 mm here; with 4000
particles at SNR 0.1 it is ~0.04 mm).
Runtime on 2 cores (measured): 286 s for both cases from scratch -- per data set relion_project
30-41 s, relion_reconstruct 25-37 s per half, Cs refinement 17-28 s (CPU backend), calibration
18-23 s; ~90 s for both with cached data.
Measured (seed 0): pixel case: calibrated 1.27506 A for true 1.2750 (+0.005%), refined Cs 2.4958
mm -> 2.7022 mm at the calibrated pixel (true 2.7), verdict "pixel size"; Cs case: calibrated
1.25011 A for 1.2500 (+0.009%), Cs 3.0001 mm (true 3.0), verdict "Cs".
The Cs refinement predicts each particle from the opposite half map (csrefine's default); the own
half map biases Cs towards the nominal value on data this small.

  python benchmarks/bench_calibration.py                 # both cases
  python benchmarks/bench_calibration.py --case pixel --n 2000 --box 112 --px 1.4

--cli: the whole ``csrefine refine --model`` run as a user starts it (a subprocess: its wall
time, its peak RSS from wait4, the load average before and after, the calibrated pixel size and
the run's timings_s from csrefine.json). The large-box figures of docs/validation.md:

  python benchmarks/bench_calibration.py --cli --case pixel --box 360 --px 0.85 --n 3000
  python benchmarks/bench_calibration.py --cli --case pixel --box 256 --px 0.9 --n 3000
  python benchmarks/bench_calibration.py --cli --case pixel --box 192 --px 1.0 --n 3000

Measured (2 cores shared with other jobs, load 2.8-3.4): box 360 +0.0018%, 51.1 s, 3.55 GiB
(43.8 s at load 0.4-0.9); box 256 -0.0003%, 33.8 s, 1.90 GiB; box 192 +0.0003%, 39.9 s,
1.53 GiB. Simulating a set (relion_project + relion_reconstruct, 3,000 particles) took 19 min at
box 192, 28 min at 256 and 52 min at 360 on the loaded machine (relion_reconstruct: 2.0, 4.8 and
13.3 GB peak RSS); the stacks take 0.5, 0.9 and 2.0 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, REPO, log  # noqa: E402


def particle_rows(n: int, rng: np.random.Generator):
    """True particle parameters in RELION columns (uniform orientations, astigmatic defoci)."""
    from relion_tools import particle_table

    from csrefine.simulate import random_particles

    parts = random_particles(n, rng, astigmatism_A=500.0, max_origin_A=3.0)
    return particle_table(parts, "none.mrcs", micrographs=max(1, n // 100))


def optics_table(cs_mm: float, px: float, box: int, voltage: float):
    from relion_tools import optics_table as table

    from csrefine.model import OpticsGroup

    return table([OpticsGroup(1, "opticsGroup1", voltage, cs_mm, 0.1, px, box)])


def docked_model(structure, box: int, p_nom: float):
    """The model with its true geometry, docked at the nominal pixel size (centroid on box//2)."""
    import gemmi

    from csrefine.calibrate import atom_positions_A

    st = structure.clone()
    st.remove_hydrogens()
    shift = (box // 2) * p_nom - atom_positions_A(st).mean(axis=0)
    for model in st:
        for ch in model:
            for res in ch:
                for a in res:
                    a.pos = gemmi.Position(a.pos.x + shift[0], a.pos.y + shift[1], a.pos.z + shift[2])
    return st


def make_data(d: Path, structure, n: int, box: int, p_nom: float, p_true: float, cs_true: float,
              cs_nominal: float, voltage: float, snr: float, seed: int, fresh: bool) -> dict:
    """Simulate with relion_project at the true optics; STAR + half maps at the nominal ones."""
    import mrcfile
    import starfile
    from relion_tools import project, reconstruct_half

    from csrefine.atomic_map import density_map
    from csrefine.images import write_map

    paths = {"star": d / "parts.star", "half1": d / "half1.mrc", "half2": d / "half2.mrc"}
    if not fresh and all(p.exists() for p in paths.values()):
        log(f"reusing cached data in {d}")
        return paths
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    timings = {}
    t0 = time.monotonic()
    vol = density_map(structure, box, p_true, b_factor_A2=20.0)
    write_map(d / "map_true.mrc", vol, p_true)
    sigma = float(np.sqrt(vol.sum(axis=0).var() / snr))
    rows = particle_rows(n, rng)
    starfile.write({"optics": optics_table(cs_true, p_true, box, voltage), "particles": rows},
                   d / "true.star", overwrite=True)
    log(f"relion_project --ctf: {n} particles, box {box}, true pixel {p_true:.4f} A, true Cs "
        f"{cs_true} mm, white noise sigma {sigma:.3g} (SNR {snr})")
    out_star = project("map_true.mrc", "true.star", "proj", p_true, white_noise=sigma, cwd=d)
    timings["relion_project_s"] = time.monotonic() - t0
    # What the user's data state: the nominal pixel size (also in the stack header) and the
    # defoci / origins a processing at p_nom gives.
    with mrcfile.open(d / "proj.mrcs", mode="r+", permissive=True) as mrc:
        mrc.voxel_size = p_nom
    r = p_nom / p_true
    nominal = rows.copy()
    nominal["rlnImageName"] = starfile.read(out_star, always_dict=True)["particles"][
        "rlnImageName"].to_numpy()
    for col in ("rlnDefocusU", "rlnDefocusV"):
        nominal[col] = rows[col] * r**2
    for col in ("rlnOriginXAngst", "rlnOriginYAngst"):
        nominal[col] = rows[col] * r
    starfile.write({"optics": optics_table(cs_nominal, p_nom, box, voltage), "particles": nominal},
                   paths["star"], overwrite=True)
    for h in (1, 2):
        t1 = time.monotonic()
        log(f"relion_reconstruct --ctf --subset {h} (nominal STAR)")
        reconstruct_half("parts.star", paths[f"half{h}"].name, h, cwd=d)
        timings[f"relion_reconstruct_half{h}_s"] = time.monotonic() - t1
    (d / "simulation_timings.json").write_text(json.dumps(timings))
    log(f"data ready in {time.monotonic() - t0:.0f} s")
    return paths


def case_truth(name: str, p_nom: float) -> tuple:
    """(p_true, cs_true, cs_nominal, expected verdict kind) of a case."""
    if name == "pixel":
        return 1.02 * p_nom, 2.7, 2.7, "pixel size"
    return p_nom, 3.0, 2.7, "Cs"


def case_data(name: str, args, structure, p_nom, p_true, cs_true, cs_nominal):
    """The case's data directory and paths (simulated once, then cached)."""
    d = Path(args.data_dir) / f"calibration_{name}_{args.box}_{args.n}"
    return d, make_data(d, structure, args.n, args.box, p_nom, p_true, cs_true, cs_nominal,
                        args.voltage, args.snr, args.seed + (0 if name == "pixel" else 1),
                        args.fresh)


def run_cli(name: str, args, structure) -> dict:
    """The whole ``csrefine refine --model`` run in a subprocess: wall, peak RSS, load, result."""
    import os
    import shutil
    import subprocess

    p_nom = args.px
    p_true, cs_true, cs_nominal, expect = case_truth(name, p_nom)
    d, paths = case_data(name, args, structure, p_nom, p_true, cs_true, cs_nominal)
    model = d / "model_docked.cif"
    docked_model(structure, args.box, p_nom).make_mmcif_document().write_file(str(model))
    out = d / "cli_out"
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).with_name("csrefine")  # this environment's, not another on PATH
    cmd = [str(exe) if exe.exists() else "csrefine", "refine", "--particles", str(paths["star"]),
           "--half-maps", str(paths["half1"]), str(paths["half2"]), "--model", str(model),
           "--out", str(out), "--j", str(args.j), "--device", args.device]
    log("running: " + " ".join(cmd))
    load_before = os.getloadavg()
    t0 = time.monotonic()
    # in the data directory: the STAR's image paths are relative to it, as in a RELION project
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=d)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if "calibration" in line or "set-up" in line:
            log("  | " + line.rstrip())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    load_after = os.getloadavg()
    if os.waitstatus_to_exitcode(status) != 0:
        log("\n".join(lines[-30:]))
        raise SystemExit(f"csrefine refine failed ({status})")
    rss_gb = usage.ru_maxrss / 1024**2  # kB -> GiB
    report = json.loads((out / "csrefine.json").read_text())
    p_cal = report["pixel_size_calibrated_A"]
    err_rel = p_cal / p_true - 1.0
    checks = {"pixel within 0.2% of truth": abs(err_rel) < 0.002,
              "wall <= 60 s": wall <= 60.0, "peak RSS <= 4 GiB": rss_gb <= 4.0}
    log(f"[{name} cli] box {args.box}, nominal {p_nom} A, true {p_true:.5f}: calibrated {p_cal:.5f}"
        f" ± {report['pixel_size_sigma_A']:.5f} A, error {100 * err_rel:+.4f}%; wall {wall:.1f} s,"
        f" peak RSS {rss_gb:.2f} GiB; load average before {load_before[0]:.2f}, after "
        f"{load_after[0]:.2f}; timings_s {report['timings_s']}")
    for k, ok in checks.items():
        log(f"[{name} cli] {'PASS' if ok else 'FAIL'}: {k}")
    return {"case": name, "box": args.box, "p_nominal_A": p_nom, "p_true_A": p_true,
            "pixel_size_calibrated_A": p_cal, "pixel_error_percent": 100 * err_rel,
            "wall_s": wall, "peak_rss_GiB": rss_gb, "load_before": load_before,
            "load_after": load_after, "timings_s": report["timings_s"],
            "grid": report.get("pixel_calibration", {}).get("grid"), "checks": checks}


def run_case(name: str, args, structure) -> dict:
    from csrefine.calibrate import apply_calibration, calibrate_pixel_size
    from csrefine.calibrate.records import calibration_json
    from csrefine.images import read_map
    from csrefine.options import RefineOptions
    from csrefine.pipeline import refine
    from csrefine.relion.run import stack_reader
    from csrefine.relion.star_io import read_particle_star
    from csrefine.results import result_dict

    p_nom = args.px
    p_true, cs_true, cs_nominal, expect = case_truth(name, p_nom)
    d, paths = case_data(name, args, structure, p_nom, p_true, cs_true, cs_nominal)
    sim_t = d / "simulation_timings.json"
    timings = json.loads(sim_t.read_text()) if sim_t.exists() else {}

    t0 = time.monotonic()
    star = read_particle_star(paths["star"])
    h1, px1 = read_map(paths["half1"])
    h2, _ = read_map(paths["half2"])
    box = h1.shape[0]
    images = stack_reader(star, d)
    refinement = refine(star.groups, star.particles, images, (h1, h2), None, px1 or None,
                        RefineOptions(resolution_low_A=20.0, threads=args.j, device=args.device,
                                      reference_half="opposite"),
                        progress=None)
    timings["cs_refine_s"] = time.monotonic() - t0
    g = refinement.groups[0]
    log(f"[{name}] Cs refined {g.cs_refined_mm:.4f} ± {g.cs_sigma_mm:.4f} mm (nominal "
        f"{cs_nominal}, true {cs_true}, apparent at p_nom "
        f"{cs_true * (p_nom / p_true) ** 4:.4f}); half-map FSC 0.143 at "
        f"{refinement.resolution_A:.2f} A; band {refinement.band_A}")

    t0 = time.monotonic()
    cal = calibrate_pixel_size(h1, h2, p_nom, docked_model(structure, box, p_nom))
    timings["calibration_s"] = time.monotonic() - t0
    (record,) = apply_calibration([result_dict(g)], cal)
    report = calibration_json(cal, [record], {record.optics_group: f"{record.kind}: {record.pixel_status}"})
    err_rel = cal.pixel_size_calibrated_A / p_true - 1.0
    cs_cal, kind = record.cs_at_calibrated_pixel_mm, record.kind
    checks = {"pixel within 0.2% of truth": abs(err_rel) < 0.002,
              "Cs at calibrated pixel within 0.03 mm of truth": abs(cs_cal - cs_true) < 0.03,
              f"verdict is '{expect}'": kind == expect}
    log(f"[{name}] pixel size: true {p_true:.5f}, nominal {p_nom:.5f}, calibrated "
        f"{cal.pixel_size_calibrated_A:.5f} ± {cal.pixel_size_sigma_A:.5f} A (curvature "
        f"{cal.sigma_curvature_A:.5f}, halves {cal.pixel_size_half1_A:.5f}/"
        f"{cal.pixel_size_half2_A:.5f}); error {100 * err_rel:+.4f}%")
    log(f"[{name}] model-map correlation {cal.correlation:.3f} ({100 * cal.relative_correlation:.0f}%"
        f" of a perfect model), real-space {cal.real_space_correlation:.3f}, B {cal.b_factor_A2:.0f} "
        f"A^2, coverage {cal.coverage:.2f}, shift {np.round(cal.shift_A, 2).tolist()} A")
    log(f"[{name}] Cs at the calibrated pixel {cs_cal:.4f} mm (true {cs_true}): error "
        f"{cs_cal - cs_true:+.4f} mm")
    log(f"[{name}] verdict: {kind}; {record.pixel_status}")
    for k, ok in checks.items():
        log(f"[{name}] {'PASS' if ok else 'FAIL'}: {k}")
    log(f"[{name}] timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return {"case": name, "p_true_A": p_true, "p_nominal_A": p_nom, "cs_true_mm": cs_true,
            "cs_nominal_mm": cs_nominal, "cs_refined_mm": g.cs_refined_mm,
            "cs_sigma_mm": g.cs_sigma_mm, "resolution_A": refinement.resolution_A,
            "pixel_error_percent": 100 * err_rel, "cs_at_calibrated_error_mm": cs_cal - cs_true,
            "calibration": {k: v for k, v in report.items()}, "checks": checks,
            "timings_s": timings, "simulator": "relion_project 3.1 + relion_reconstruct"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=["pixel", "cs", "both"], default="both")
    p.add_argument("--n", type=int, default=16000, help="particles per data set (default 16000)")
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--px", type=float, default=1.25, help="nominal pixel size, A (default 1.25)")
    p.add_argument("--snr", type=float, default=0.5, help="per-image SNR (default 0.5)")
    p.add_argument("--voltage", type=float, default=300.0)
    p.add_argument("--j", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="re-simulate even if cached")
    p.add_argument("--data-dir", default=str(REPO / "benchmarks/data"))
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--cli", action="store_true",
                   help="time the whole `csrefine refine --model` run (wall, peak RSS)")
    args = p.parse_args(argv)

    import gemmi
    from relion_tools import have_relion
    if not have_relion("relion_project", "relion_reconstruct"):
        log("relion_project / relion_reconstruct not found: cannot run this benchmark")
        return 2
    structure = gemmi.read_structure(str(MODEL))
    structure.remove_hydrogens()
    t0 = time.monotonic()
    cases = ["pixel", "cs"] if args.case == "both" else [args.case]
    if args.cli:
        results = [run_cli(c, args, structure) for c in cases]
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=float))
        ok = all(all(r["checks"].values()) for r in results)
        log("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
        return 0 if ok else 1
    results = [run_case(c, args, structure) for c in cases]
    log(f"total {time.monotonic() - t0:.0f} s")
    ok = all(all(r["checks"].values()) for r in results)
    for r in results:
        log(f"SUMMARY [{r['case']}] pixel error {r['pixel_error_percent']:+.3f}%, Cs at calibrated "
            f"pixel error {r['cs_at_calibrated_error_mm']:+.4f} mm, verdict kind "
            f"'{r['calibration']['pixel_calibration']['groups']['1']['kind']}'")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    log("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
