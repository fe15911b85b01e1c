"""csrefine against relion_ctf_refine --fit_aberr on several data sets.

Each data set is simulated as in bench_ctf_refine.py (relion_project from the 1BD2 model or a
part of it, true Cs 3.0 mm, nominal 2.7 mm, half maps by relion_reconstruct; cached under
benchmarks/data/). Per data set the two programs run in PAIRS alternating their order
(RELION first in pair 1, csrefine first in pair 2, ...), same thread count, each as a subprocess
under /usr/bin/time -v (the whole command line: start-up, reading, writing the outputs). Printed
per data set: the median wall time of each, the median of the per-pair ratios csrefine / RELION,
particles per second and the Cs each found; then one line per data set with the ratio.

  python benchmarks/bench_suite.py                   # the three default sets, 3 pairs each
  python benchmarks/bench_suite.py --sets small      # only the 10k box-128 set
  python benchmarks/bench_suite.py --pairs 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ctf_refine import data_set_dir, make_data, run_csrefine, run_relion  # noqa: E402
from common import REPO, log, speed_probe, warm_up  # noqa: E402


@dataclass(frozen=True)
class DataSet:
    name: str
    protein: str
    chains: str | None  # None: the whole 1BD2 model
    n: int
    box: int
    pixel_size_A: float
    voltage_kv: float = 300.0
    cs_true_mm: float = 3.0
    cs_nominal_mm: float = 2.7
    snr: float = 0.05
    seed: int = 0


#: The data sets: boxes 128 and 192, 10k and 50k particles, two proteins and pixel sizes.
SETS = {
    "small": DataSet("tcr-pmhc_10k_box128", "1BD2 TCR-pMHC (95 kDa)", None, 10_000, 128, 1.1),
    "large": DataSet("tcr-pmhc_50k_box128", "1BD2 TCR-pMHC (95 kDa)", None, 50_000, 128, 1.1),
    "box192": DataSet("pmhc_10k_box192", "1BD2 chains A-C, pMHC (45 kDa)", "ABC", 10_000, 192,
                      0.85, voltage_kv=200.0, seed=1),
}


def data_dir(root: Path, s: DataSet) -> Path:
    return data_set_dir(root, s.n, s.box, s.pixel_size_A, s.cs_true_mm, s.seed, s.voltage_kv,
                        s.chains)


def simulate(s: DataSet, root: Path) -> dict:
    """The data set ``s`` under ``root`` (simulated on first use); its paths."""
    return make_data(data_dir(root, s), s.n, s.box, s.pixel_size_A, s.cs_true_mm,
                     s.cs_nominal_mm, s.voltage_kv, s.snr, s.seed, chains=s.chains)


def run_pairs(s: DataSet, paths: dict, pairs: int, threads: int, device: str) -> list[dict]:
    runs = []
    for i in range(pairs):
        order = ("relion", "csrefine") if i % 2 == 0 else ("csrefine", "relion")
        for program in order:
            tag = f"{s.name}_{i}"
            if program == "relion":
                r = run_relion(paths, paths["star"], threads, tag, s.cs_nominal_mm, s.voltage_kv)
                r["program"] = "relion_ctf_refine"
            else:
                r = run_csrefine(paths, paths["star"], threads, tag, device)
                r["program"] = "csrefine"
            r.update(pair=i, set=s.name, speed_probe_s=speed_probe())
            log(f"{s.name} pair {i + 1}: {r['program']} {r['wall_s']:.2f} s, Cs {r['cs_mm']:.4f} "
                f"mm, peak {r['peak_rss_mib'] or 0:.0f} MiB, load {r['load_1min'][0]:.1f}")
            runs.append(r)
    return runs


def summary(s: DataSet, runs: list[dict]) -> dict:
    by = {p: sorted((r for r in runs if r["program"] == p), key=lambda r: r["pair"])
          for p in ("relion_ctf_refine", "csrefine")}
    ratios = [c["wall_s"] / r["wall_s"] for c, r in zip(by["csrefine"], by["relion_ctf_refine"])]
    out = {"set": asdict(s), "median_ratio": statistics.median(ratios), "ratios": ratios}
    for p, rs in by.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        out[p] = {"median_wall_s": wall, "particles_per_s": s.n / wall,
                  "cs_mm": statistics.median(r["cs_mm"] for r in rs),
                  "cs_error_mm": statistics.median(r["cs_mm"] for r in rs) - s.cs_true_mm,
                  "peak_rss_mib": max(r["peak_rss_mib"] or 0 for r in rs),
                  "walls_s": [r["wall_s"] for r in rs],
                  "load_1min": [r["load_1min"][0] for r in rs],
                  "speed_probe_s": [r["speed_probe_s"] for r in rs]}
        if p == "csrefine":
            out[p]["timings_s"] = rs[len(rs) // 2]["timings"]
    return out


def print_table(results: list[dict], threads: int) -> None:
    print()
    print(f"csrefine vs relion_ctf_refine --fit_aberr, --j {threads}, {os.cpu_count()} CPUs; "
          f"median of the pairs (alternating order)")
    head = (f"{'data set':<22} {'program':<18} {'wall s':>7} {'particles/s':>11} "
            f"{'Cs mm':>7} {'error':>7} {'peak MiB':>8} {'load':>9}")
    print(head)
    print("-" * len(head))
    for res in results:
        for p in ("relion_ctf_refine", "csrefine"):
            r = res[p]
            print(f"{res['set']['name']:<22} {p:<18} {r['median_wall_s']:>7.2f} "
                  f"{r['particles_per_s']:>11.0f} {r['cs_mm']:>7.4f} {r['cs_error_mm']:>+7.4f} "
                  f"{r['peak_rss_mib']:>8.0f} {min(r['load_1min']):>4.1f}-{max(r['load_1min']):<4.1f}")
    print()
    for res in results:
        s = res["set"]
        print(f"{s['name']}: {s['protein']}, {s['n']} particles, box {s['box']}, "
              f"{s['pixel_size_A']} A, {s['voltage_kv']:g} kV: median csrefine / RELION = "
              f"{res['median_ratio']:.2f} (pairs: "
              + ", ".join(f"{x:.2f}" for x in res["ratios"]) + "; speed probe "
              + ", ".join(f"{x:.3f}" for x in res["csrefine"]["speed_probe_s"]) + " s)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--pairs", type=int, default=3, help="alternating pairs per set (default 3)")
    p.add_argument("--j", type=int, default=2, help="threads for both programs (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=str(REPO / "benchmarks/data"))
    p.add_argument("--data-only", action="store_true", help="simulate the data sets and stop")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    chosen = [SETS[name] for name in args.sets]
    paths = {}
    for s in chosen:
        log(f"data set {s.name}")
        paths[s.name] = simulate(s, Path(args.data_dir))
    if args.data_only:
        return 0
    warm_up(args.device)
    results = [summary(s, run_pairs(s, paths[s.name], args.pairs, args.j, args.device))
               for s in chosen]
    print_table(results, args.j)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
