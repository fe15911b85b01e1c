"""Is the Cs sigma honest without RELION in between? (figures, not a test)

Replicates simulated with csrefine's own forward model (:mod:`csrefine.simulate`: a model map of
the packaged 1BD2, random orientations and defoci, white noise), true and nominal Cs 2.7 mm,
refined against the noise-free map (as both half maps) and against half maps with independent
noise of a realistic spectrum (FSC 0.143 at 3.0 Å, :func:`csrefine.simulate.half_maps_with_resolution`),
band to 3.0 Å. Prints z = (Cs - truth) / sigma per replicate and, per kind of reference, its
mean and rms (0 and 1 for an unbiased estimate with an honest sigma).

  python benchmarks/bench_sigma_forward.py --box 128 --n 4000 --noise 25 --replicates 6
"""

from __future__ import annotations

import argparse

import numpy as np
from common import log, z_summary

from csrefine.model import OpticsGroup
from csrefine.options import RefineOptions
from csrefine.pipeline import refine
from csrefine.simulate import (
    ArrayImages,
    half_maps_with_resolution,
    model_map,
    random_particles,
    simulate_images,
)

CS_TRUE = 2.7


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--pixel", type=float, default=1.1)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--noise", type=float, default=25.0, help="image noise std (map std 1)")
    ap.add_argument("--replicates", type=int, default=6)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    volume = model_map(args.box, args.pixel, rng)
    volume = volume / volume.std()
    truth = OpticsGroup(1, "g", 300.0, CS_TRUE, 0.1, args.pixel, args.box)
    z = {"noise-free map": [], "noisy half maps": []}
    for r in range(args.replicates):
        parts = random_particles(args.n, rng)
        images = ArrayImages(simulate_images(volume, truth, parts, args.noise, rng))
        for kind in z:
            halves = ((volume, volume) if kind == "noise-free map"
                      else half_maps_with_resolution(volume, args.pixel, 3.0, rng))
            g = refine({1: truth}, parts, images, halves,
                       options=RefineOptions(device="cpu", resolution_high_A=3.0, seed=r,
                                             threads=2)).groups[0]
            z[kind].append((g.cs_refined_mm - CS_TRUE) / g.cs_sigma_mm)
            log(f"replicate {r}, {kind}: {g.cs_refined_mm:.4f} ± {g.cs_sigma_mm:.4f} mm, "
                f"z {z[kind][-1]:+.2f}")
    for kind, values in z.items():
        log(f"{kind}: {z_summary(values)}")


if __name__ == "__main__":
    main()
