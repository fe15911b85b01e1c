"""GPU benchmark: csrefine --device cuda vs --device cpu on the same data, and the I/O limit.

Needs no RELION (the GPU machine has none): the particles are simulated with csrefine's own
forward model (csrefine.simulate, checked against relion_project in tests/test_relion_forward.py)
from a map of the 1BD2 model, in parallel processes, written as stacks of 100 images (one per
"micrograph", as extraction writes them); the half maps are the map plus independent noise.

Steps (all timed; data cached under --data-dir):
  1. data: ``--n`` particles, box ``--box``, true Cs ``--cs-true``; STAR with the nominal Cs;
     ``--rows`` rows re-using the stack (``parts_x<rows>.star``) so that the timed run is long
     enough to measure at GPU speed while the stacks stay in the page cache;
  2. page cache: every stack is read once with plain file reads (GB/s printed);
  3. I/O alone: the same STAR's images streamed through csrefine's reader (StackReader +
     BatchStream, same batch size and reader threads as the GPU run) with no computation;
  4. ``csrefine refine --device cuda --j J`` and ``--device cpu --j J`` on the same STARs, as
     subprocesses (wall time, peak RSS), the accumulation rate from csrefine.json's timings;
  5. the table, the ratio of the GPU accumulation rate to the I/O-alone rate, and the Cs
     difference between the GPU and CPU runs.

  python benchmarks/bench_gpu.py                      # 10k particles, box 256, 100k rows, --j 16
  python benchmarks/bench_gpu.py --rows 100000,1000000   # + a 1M-row STAR (GPU only)
  python benchmarks/bench_gpu.py --box 128 --px 1.0 --rows 200000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ctf_refine import optics, scaled_star, timed  # noqa: E402
from common import MODEL, REPO, log, repo_env, warm_up  # noqa: E402

PER_STACK = 100
_SIM = {}  # the map and optics group, inherited by forked workers


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def _simulate_stack(job):
    """Worker: simulate one stack of particles and write it (fork start method)."""
    from csrefine.images import write_stack
    from csrefine.simulate import simulate_images

    path, parts, sigma, seed = job
    rng = np.random.default_rng(seed)
    images = simulate_images(_SIM["vol"], _SIM["group"], parts, sigma, rng)
    write_stack(path, images, _SIM["group"].pixel_size_A)
    return path


def make_data(d: Path, n: int, box: int, px: float, cs_true: float, cs_nominal: float,
              voltage: float, snr: float, seed: int, workers: int) -> dict:
    import gemmi
    import starfile
    from relion_tools import particle_table

    from csrefine.atomic_map import density_map
    from csrefine.fsc import soft_spherical_mask
    from csrefine.images import write_map
    from csrefine.model import OpticsGroup
    from csrefine.simulate import random_particles

    paths = {"dir": d, "star": d / "parts.star", "half1": d / "half1.mrc",
             "half2": d / "half2.mrc", "mask": d / "mask.mrc"}
    if all(p.exists() for p in paths.values()):
        log(f"reusing cached data in {d}")
        return paths
    d.mkdir(parents=True, exist_ok=True)
    (d / "stacks").mkdir(exist_ok=True)
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    vol = density_map(gemmi.read_structure(str(MODEL)), box, px, b_factor_A2=20.0)
    sigma = float(np.sqrt(vol.sum(axis=0).var() / snr))
    parts = random_particles(n, rng, astigmatism_A=500.0, max_origin_A=3.0)
    _SIM["vol"], _SIM["group"] = vol, OpticsGroup(1, "opticsGroup1", voltage, cs_true, 0.1, px, box)
    jobs = [(str(d / "stacks" / f"mic{s // PER_STACK:05d}.mrcs"),
             parts.subset(np.arange(s, min(s + PER_STACK, n))), sigma, seed * 100003 + s)
            for s in range(0, n, PER_STACK)]
    log(f"simulating {n} particles (box {box}, {px} A, Cs {cs_true} mm, SNR {snr}) in "
        f"{len(jobs)} stacks with {workers} processes")
    import multiprocessing
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(_simulate_stack, jobs))
    rows = particle_table(parts, "x", micrographs=1)
    rows["rlnImageName"] = [f"{i % PER_STACK + 1:06d}@stacks/mic{i // PER_STACK:05d}.mrcs"
                            for i in range(n)]
    rows["rlnMicrographName"] = [f"mic{i // PER_STACK:05d}.mrc" for i in range(n)]
    starfile.write({"optics": optics(cs_nominal, px, box, voltage), "particles": rows},
                   paths["star"], overwrite=True)
    noise = 0.05 * float(vol.std())
    for h in (1, 2):
        write_map(paths[f"half{h}"], vol + rng.normal(0, noise, vol.shape).astype(np.float32), px)
    write_map(paths["mask"], soft_spherical_mask(box, 0.4 * box - 6), px)
    log(f"data ready in {time.monotonic() - t0:.0f} s")
    return paths


# --------------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------------

def page_cache(d: Path) -> dict:
    """Read every stack once with plain reads (loads them into the page cache)."""
    files = sorted((d / "stacks").glob("*.mrcs"))
    total = 0
    t0 = time.monotonic()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(64 << 20):
                total += len(chunk)
    wall = time.monotonic() - t0
    return {"bytes": total, "wall_s": wall, "gb_per_s": total / wall / 1e9}


def read_only(star: Path, batch: int, readers: int, pinned: bool) -> dict:
    """Stream all images of ``star`` through csrefine's reader, nothing else (run in a fresh
    process, like csrefine). ``pinned``: into the GPU backend's pinned host buffers."""
    from csrefine.relion.run import stack_reader
    from csrefine.relion.star_io import read_particle_star
    from csrefine.streaming import BatchStream

    t0 = time.monotonic()
    s = read_particle_star(star)
    reader = stack_reader(s, star.parent)
    setup = time.monotonic() - t0
    box = next(iter(s.groups.values())).box_size
    buffer = None
    if pinned:
        from csrefine.backends import cupy_backend
        cupy_backend.warm_up()  # CUDA initialised before the clock starts, as in csrefine
        buffer = cupy_backend.host_buffer
    stream = BatchStream(reader, np.arange(len(reader)), batch, box, buffer=buffer,
                         readers=readers)  # buffers allocated outside the timing
    t0 = time.monotonic()
    n = 0
    for idx, _ in stream:
        n += idx.size
    wall = time.monotonic() - t0
    return {"rows": n, "setup_s": setup, "wall_s": wall, "particles_per_s": n / wall,
            "gb_per_s": n * box * box * 4 / wall / 1e9}


def run_read_only(star: Path, batch: int, readers: int, pinned: bool) -> dict:
    import subprocess
    cmd = [sys.executable, __file__, "--read-only", str(star), "--batch", str(batch),
           "--j", str(readers)] + (["--pinned"] if pinned else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=repo_env())
    if out.returncode != 0:
        raise RuntimeError(f"read-only run failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# csrefine runs
# --------------------------------------------------------------------------------------------

def run_csrefine(paths: dict, star: Path, device: str, threads: int, tag: str,
                 kmax_A: float, batch: int | None) -> dict:
    out = paths["dir"] / f"csrefine_{tag}"
    env = repo_env()
    cmd = [sys.executable, "-m", "csrefine.cli", "refine", "--particles", star.name, "--half-maps",
           paths["half1"].name, paths["half2"].name, "--mask", paths["mask"].name, "--out",
           out.name, "--j", threads, "--device", device, "--kmax-A", kmax_A]
    if batch:
        cmd += ["--batch-size", batch]
    log("running " + " ".join(map(str, cmd[1:])))
    res = timed(cmd, paths["dir"], env=env)
    (out / "bench.log").write_text(res["output"])
    report = json.loads((out / "csrefine.json").read_text())
    g = report["groups"][0]
    res.update(cs_mm=float(g["cs_refined_mm"]), cs_sigma_mm=g["cs_sigma_mm"],
               timings=report.get("timings_s", {}), backend=report.get("backend"))
    return res


def gpu_name() -> str:
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception as exc:  # informative only
        return f"no GPU ({exc.__class__.__name__})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000, help="particles simulated (default 10000)")
    p.add_argument("--box", type=int, default=256)
    p.add_argument("--px", type=float, default=0.5)
    p.add_argument("--rows", default="100000",
                   help="comma-separated row counts of further STARs re-using the simulated "
                        "stacks (default 100000)")
    p.add_argument("--cpu-max-rows", type=int, default=100000,
                   help="run --device cpu only on STARs of at most this many rows (default 100000)")
    p.add_argument("--j", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--kmax-A", type=float, default=2.5, help="fitted band's high-resolution end")
    p.add_argument("--cs-true", type=float, default=3.0)
    p.add_argument("--cs-nominal", type=float, default=2.7)
    p.add_argument("--voltage", type=float, default=300.0)
    p.add_argument("--snr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="--batch-size for csrefine (default: "
                   "the backend's)")
    p.add_argument("--devices", default="cuda,cpu", help="csrefine devices to run (default cuda,cpu)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--data-dir", default=str(REPO / "benchmarks/data"))
    p.add_argument("--json", default=None)
    p.add_argument("--read-only", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.read_only:
        print(json.dumps(read_only(Path(args.read_only), args.batch or 256, args.j, args.pinned)))
        return 0

    d = Path(args.data_dir) / f"sim_n{args.n}_box{args.box}_px{args.px:g}_cs{args.cs_true:g}"
    paths = make_data(d, args.n, args.box, args.px, args.cs_true, args.cs_nominal, args.voltage,
                      args.snr, args.seed, args.j)
    sets = [(f"n{args.n}", paths["star"], args.n)]
    for rows in (int(x) for x in args.rows.split(",") if x):
        if rows != args.n:
            sets.append((f"rows{rows}", scaled_star(paths, rows), rows))
    for what in ("first read", "page cache"):  # the second read comes from the page cache
        cache = page_cache(d)
        log(f"{what}: {cache['bytes'] / 1e9:.2f} GB of stacks read in {cache['wall_s']:.2f} s "
            f"({cache['gb_per_s']:.2f} GB/s, plain file reads, one thread)")
    devices = [x for x in args.devices.split(",") if x]
    for dev in devices:
        warm_up(dev)
    gpu = "cuda" in devices
    if gpu:
        from csrefine.backends import cupy_backend  # fails early without CuPy
        batch = args.batch or cupy_backend.default_batch_size(args.box)
    else:
        batch = args.batch or 256
    results, io = [], {}
    for tag, star, rows in sets:
        for pinned in ((True, False) if gpu else (False,)):
            r = run_read_only(star, batch, args.j, pinned)
            io[(tag, pinned)] = r
            log(f"I/O alone {tag} ({'pinned' if pinned else 'pageable'} buffers, batch "
                f"{batch}, {args.j} readers): {r['particles_per_s']:.0f} particles/s, "
                f"{r['gb_per_s']:.2f} GB/s (+{r['setup_s']:.2f} s STAR/stack set-up)")
        for _rep in range(args.repeat):
            for dev in devices:
                if dev != "cuda" and rows > args.cpu_max_rows:
                    continue
                r = run_csrefine(paths, star, dev, args.j, f"{tag}_{dev}", args.kmax_A, args.batch)
                acc = r["timings"].get("accumulate_group1", float("nan"))
                r.update(device=dev, set=tag, rows=rows, accumulate_s=acc,
                         accumulate_per_s=rows / acc)
                results.append(r)
                log(f"csrefine {dev} {tag}: wall {r['wall_s']:.2f} s, accumulation {acc:.2f} s "
                    f"({rows / acc:.0f} particles/s), peak {r['peak_rss_mib']:.0f} MiB, Cs "
                    f"{r['cs_mm']:.5f} +- {r['cs_sigma_mm']:.5f} mm; timings "
                    + ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items()))
    print()
    print(f"GPU: {gpu_name()}; {os.cpu_count()} CPUs; --j {args.j}; box {args.box}, pixel "
          f"{args.px} A, band 20-{args.kmax_A} A; {args.n} simulated particles (true Cs "
          f"{args.cs_true}, nominal {args.cs_nominal} mm); page cache read "
          f"{cache['gb_per_s']:.2f} GB/s")
    head = (f"{'run':<26} {'rows':>8} {'wall s':>8} {'accum s':>8} {'accum p/s':>10} "
            f"{'whole p/s':>10} {'peak MiB':>9} {'Cs mm':>9}")
    print(head)
    print("-" * len(head))
    for (tag, pinned), r in io.items():
        print(f"{'I/O alone ' + ('pinned' if pinned else 'pageable'):<26} {r['rows']:>8} "
              f"{r['wall_s']:>8.2f} {'':>8} {r['particles_per_s']:>10.0f} {'':>10} {'':>9} {'':>9}"
              f"   ({tag})")
    for r in results:
        print(f"{'csrefine ' + r['device'] + ' ' + r['set']:<26} {r['rows']:>8} {r['wall_s']:>8.2f} "
              f"{r['accumulate_s']:>8.2f} {r['accumulate_per_s']:>10.0f} "
              f"{r['rows'] / r['wall_s']:>10.0f} {r['peak_rss_mib'] or 0:>9.0f} {r['cs_mm']:>9.5f}")
    for tag, _, _ in sets:
        by = {r["device"]: r for r in results if r["set"] == tag}
        if "cuda" in by:
            ratio = by["cuda"]["accumulate_per_s"] / io[(tag, True)]["particles_per_s"]
            print(f"{tag}: GPU accumulation rate / I/O-alone rate (pinned) = {ratio:.2f}")
        if "cuda" in by and "cpu" in by:
            print(f"{tag}: |Cs(cuda) - Cs(cpu)| = {abs(by['cuda']['cs_mm'] - by['cpu']['cs_mm']):.2e} mm")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"io": {f"{k[0]}_{'pinned' if k[1] else 'pageable'}": v for k, v in io.items()},
             "page_cache": cache,
             "runs": [{k: v for k, v in r.items() if k != "output"} for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
