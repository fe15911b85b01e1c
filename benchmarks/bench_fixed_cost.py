"""The fixed cost: csrefine refine on the first 1,000 particles of a bench_suite data set,
alternating with relion_ctf_refine
--fit_aberr on the same particles for scale.

Each run is the whole command line as a subprocess (start-up, imports, reading, the refinement,
writing the particle STAR, csrefine.json and logfile.pdf). Printed: every run's wall and CPU time
(all processes) and csrefine's own phases; then the median, min and max of each program.

  python benchmarks/bench_fixed_cost.py                  # 7 pairs on the small set
  python benchmarks/bench_fixed_cost.py --reps 11 --sets small box192 --no-relion
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ctf_refine import run_csrefine, run_relion  # noqa: E402
from bench_suite import SETS, simulate  # noqa: E402
from common import REPO, log, speed_probe, warm_up  # noqa: E402

PARTICLES = 1000


def first_rows(star: Path, rows: int) -> Path:
    """A STAR of the first ``rows`` particles of ``star`` (same optics table and stacks)."""
    import starfile

    out = star.with_name(f"parts_first{rows}.star")
    if not out.exists():
        blocks = starfile.read(star, always_dict=True)
        starfile.write({"optics": blocks["optics"], "particles": blocks["particles"].iloc[:rows]},
                       out, overwrite=True)
    return out


def spread(values) -> str:
    return (f"median {statistics.median(values):.2f} s (min {min(values):.2f}, "
            f"max {max(values):.2f}, n={len(values)})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["small"], choices=list(SETS))
    p.add_argument("--reps", type=int, default=7, help="runs of each program (default 7)")
    p.add_argument("--j", type=int, default=2)
    p.add_argument("--no-relion", action="store_true", help="time csrefine only")
    p.add_argument("--data-dir", default=str(REPO / "benchmarks/data"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    warm_up("cpu")
    results = {}
    for key in args.sets:
        s = SETS[key]
        paths = simulate(s, Path(args.data_dir))
        star = first_rows(paths["star"], PARTICLES)
        runs = {"csrefine": [], "relion_ctf_refine": []}
        for i in range(args.reps):
            order = ["csrefine"] if args.no_relion else (
                ["relion_ctf_refine", "csrefine"] if i % 2 == 0 else
                ["csrefine", "relion_ctf_refine"])
            probe = speed_probe()
            log(f"speed probe {probe:.3f} s")
            for program in order:
                tag = f"{s.name}_1k_{i}"
                if program == "csrefine":
                    r = run_csrefine(paths, star, args.j, tag, "cpu")
                    phases = " ".join(f"{k.split('_group')[0]} {v:.2f}"
                                      for k, v in r["timings"].items() if k != "refine")
                    log(f"{s.name} 1k run {i + 1}: csrefine {r['wall_s']:.2f} s wall, CPU "
                        f"{r['cpu_s']:.2f} s, Cs {r['cs_mm']:.4f} mm, backend {r['backend']}; "
                        f"phases: {phases}")
                else:
                    r = run_relion(paths, star, args.j, tag, s.cs_nominal_mm, s.voltage_kv)
                    log(f"{s.name} 1k run {i + 1}: relion_ctf_refine {r['wall_s']:.2f} s wall, "
                        f"CPU {r['cpu_s']:.2f} s, Cs {r['cs_mm']:.4f} mm")
                runs[program].append({k: r[k] for k in ("wall_s", "cpu_s", "cs_mm")}
                                     | {"load_1min": r["load_1min"][0], "speed_probe_s": probe})
        results[key] = runs
    print()
    print(f"Fixed cost: the first {PARTICLES} particles, --j {args.j}, {os.cpu_count()} CPUs")
    for key, runs in results.items():
        for program, rs in runs.items():
            if rs:
                print(f"  {SETS[key].name:<24} {program:<18} wall "
                      f"{spread([r['wall_s'] for r in rs])}; CPU median "
                      f"{statistics.median(r['cpu_s'] for r in rs):.2f} s; Cs median "
                      f"{statistics.median(r['cs_mm'] for r in rs):.4f} mm; speed probe median "
                      f"{statistics.median(r['speed_probe_s'] for r in rs):.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
