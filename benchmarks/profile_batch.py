"""Where the CPU backend's time goes for one batch, by thread count (figures, not a test).

Times, for one batch of random images at the given box and band: the band
transforms (scipy.fft and the centring sign), and the whole accumulate_batch (transforms + C kernel), for
each thread count in --threads; prints ms per batch and particles/s.

  python benchmarks/profile_batch.py --box 256 --px 0.5 --kmax-A 2.5 --threads 1,2,4,8,16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _ms(f, repeat: int) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(repeat):
        f()
    return (time.perf_counter() - t0) / repeat * 1e3


def main(argv=None) -> int:
    from csrefine.backends import cpu_backend as nb
    from csrefine.forward import pixel_terms
    from csrefine.fourier import make_band
    from csrefine.model import OpticsGroup
    from csrefine.projection import make_padded_reference
    from csrefine.simulate import random_particles

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=256)
    p.add_argument("--px", type=float, default=0.5)
    p.add_argument("--kmin-A", type=float, default=20.0)
    p.add_argument("--kmax-A", type=float, default=2.5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    box, px = args.box, args.px
    group = OpticsGroup(1, "g", 300.0, 2.7, 0.1, px, box)
    band = make_band(box, px, 1 / args.kmin_A, 1 / args.kmax_A)
    terms = pixel_terms(group, band)
    ref = make_padded_reference(rng.normal(size=(box,) * 3).astype(np.float32), px / args.kmax_A,
                                2, 4, margin=1.01)
    parts = random_particles(args.batch, rng)
    images = rng.normal(size=(args.batch, box, box)).astype(np.float32)
    cells = rng.integers(0, 12, args.batch)
    stats = np.zeros((12, 6, band.size))
    nb.warm_up()
    print(f"box {box}, {px} A, band {args.kmin_A}-{args.kmax_A} A ({band.size} pixels), batch "
          f"{args.batch}")
    print(f"{'threads':>7} {'transforms ms':>14} {'batch ms':>9} {'particles/s':>12}")
    for threads in (int(t) for t in args.threads.split(",")):
        transforms = _ms(lambda t=threads: nb.band_transforms(images, band, t), args.repeat)
        whole = _ms(lambda t=threads: nb.accumulate_batch(stats, cells, images, parts, ref, terms,
                                                          band, px, t), args.repeat)
        print(f"{threads:>7} {transforms:>14.1f} {whole:>9.1f} "
              f"{args.batch / whole * 1e3:>12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
