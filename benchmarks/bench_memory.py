"""Peak memory of a whole ``csrefine refine --model`` run on a large box, phase by phase.

The data are csrefine's own simulation (``csrefine.relion.example.make_example``: two optics
groups, true Cs 3.0 and 2.7 mm, nominal 2.7, the 1BD2 model docked): no RELION needed. With
``--fsc-to-nyquist`` (the default) the half maps are the model's map plus little noise, so their
FSC stays above 0.143 up to Nyquist and every stage works on the whole box: the largest padded
references and calibration grids a box of that size can give.

The run is started as a user starts it; its resident set size (VmRSS) is sampled every 50 ms and
printed with the largest value between consecutive progress lines, so that the phase holding the
peak (set-up, particles, calibration scan, calibration refinement, outputs) can be read off.

  python benchmarks/bench_memory.py                       # box 360, 0.85 A, 2 x 800 particles
  python benchmarks/bench_memory.py --box 256 --px 1.0 --no-model
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import MODEL, log

from csrefine.relion.example import make_example


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line for line in fh if line.startswith("VmRSS")).split()[1]) / 1024


def run_sampled(cmd: list[str], cwd: Path) -> tuple[int, float, list, list]:
    """(exit status, wall s, [(t, line)], [(t, RSS MiB)]) of ``cmd`` run in ``cwd``."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines, samples = [], []

    def read():
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            samples.append((time.monotonic() - t0, rss_mib(proc.pid)))
        except (OSError, StopIteration):
            pass
        time.sleep(0.05)
    reader.join(timeout=5)
    return proc.returncode, time.monotonic() - t0, lines, samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=360)
    p.add_argument("--px", type=float, default=0.85)
    p.add_argument("--n", type=int, default=800, help="particles per optics group")
    p.add_argument("--j", type=int, default=2)
    p.add_argument("--no-model", action="store_true", help="without --model (no calibration)")
    p.add_argument("--data-dir", default=str(Path(__file__).parent / "data"))
    args = p.parse_args()
    root = Path(args.data_dir) / f"memory_box{args.box}_px{args.px}_n{args.n}"
    if not (root / "Refine3D/job002/run_data.star").is_file():
        t0 = time.monotonic()
        make_example(root, n_per_group=(args.n, args.n), box=args.box, pixel_size_A=args.px,
                     noise_sigma=3.0, model_path=MODEL, half_maps_from_particles=False)
        log(f"simulated {2 * args.n} particles, box {args.box}, {args.px} A in "
            f"{time.monotonic() - t0:.0f} s: {root}")
    out = root / "csrefine_out"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, "-m", "csrefine.cli", "refine",
           "--particles", "Refine3D/job002/run_data.star",
           "--half-maps", "Refine3D/job002/run_half1_class001_unfil.mrc",
           "Refine3D/job002/run_half2_class001_unfil.mrc",
           "--mask", "MaskCreate/job003/mask.mrc", "--out", str(out), "--j", str(args.j)]
    if not args.no_model:
        cmd += ["--model", "Refine3D/job002/model_docked.cif"]
    status, wall, lines, samples = run_sampled(cmd, root)
    peak_t, peak = max(samples, key=lambda s: s[1])
    previous = 0.0
    for t, line in lines:
        if "%)" in line or line.startswith(("  ", "-")):
            continue  # progress percentages and the report's body
        held = max((r for s, r in samples if previous <= s <= t), default=0.0)
        print(f"{t:7.1f} s  peak since the previous line {held:7.0f} MiB  {line[:90]}")
        previous = t
    log(f"box {args.box}, {args.px} A, {2 * args.n} particles, --j {args.j}, "
        f"{'without' if args.no_model else 'with'} --model: exit {status}, wall {wall:.1f} s, "
        f"peak RSS {peak:.0f} MiB at {peak_t:.1f} s")


if __name__ == "__main__":
    main()
