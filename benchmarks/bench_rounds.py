"""Rounds over independent data sets: the Cs 0.7 mm off, two rounds (figures).

For each seed, RELION's own tools make a data set (relion_project images with the true Cs 2.7 mm,
the configuration of tests/test_rounds.py: 4,000 particles, box 128, 1.1 Å, white noise 4). The
particle STAR then states Cs 2.0 mm and relion_reconstruct makes the half maps from it, as a
user's would be. csrefine runs two rounds (rebuilding the half maps with round 1's Cs) and, on
the same images, one round with the right nominal Cs and half maps made with it.

Printed per seed: round 1 and round 2 Cs ± sigma and FSC resolution, the right-nominal result,
z = (Cs - truth) / sigma. At the end: how many round-2 results lie within 1 sigma of the truth
(68% expected of an unbiased estimate with an honest sigma), the rms and mean of z, and how far
round 2 lands from the right-nominal result of the same images.

  python benchmarks/bench_rounds.py --seeds 8 --out /tmp/bench_rounds
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gemmi
import numpy as np
from common import MODEL, log, z_summary
from relion_tools import reconstruct_half, simulate_dataset

from csrefine.options import RefineOptions
from csrefine.relion.run import run
from csrefine.relion.star_io import read_particle_star, write_updated_star

CS_TRUE, CS_FAR = 2.7, 2.0


def one_seed(base: Path, structure, seed: int, n: int, box: int) -> dict:
    d = simulate_dataset(base / f"seed{seed}", structure, n=n, cs_true_mm=CS_TRUE,
                         cs_nominal_mm=CS_TRUE, box=box, pixel_nominal_A=1.1, seed=seed)
    write_updated_star(read_particle_star(d["star"]), d["dir"] / "far.star", {1: CS_FAR}, {}, {})
    for h in (1, 2):
        reconstruct_half("far.star", f"far_half{h}.mrc", h, cwd=d["dir"])
    out = {}
    for name, star, halves, rounds in (
            ("far", d["dir"] / "far.star", [d["dir"] / f"far_half{h}.mrc" for h in (1, 2)], 2),
            ("right", d["star"], [d["half1"], d["half2"]], 1)):
        job = base / f"seed{seed}_{name}"
        run(star, *halves, job, mask=d["mask"],
            options=RefineOptions(threads=2, rounds=rounds, keep_round_maps="no"),
            base_dir=d["dir"])
        out[name] = json.loads((job / "csrefine.json").read_text())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=200)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_rounds"))
    args = ap.parse_args()
    structure = gemmi.read_structure(str(MODEL))
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        res = one_seed(args.out, structure, seed, args.n, args.box)
        r1, r2 = (r["groups"][0] for r in res["far"]["rounds"][:2])
        right = res["right"]["groups"][0]
        f1, f2 = (r["resolution_fsc_A"] for r in res["far"]["rounds"][:2])
        z2 = (r2["cs_mm"] - CS_TRUE) / r2["cs_sigma_mm"]
        zr = (right["cs_refined_mm"] - CS_TRUE) / right["cs_sigma_mm"]
        rows.append((z2, zr, r2["cs_mm"] - right["cs_refined_mm"], r2["cs_sigma_mm"]))
        log(f"seed {seed}: round 1 {r1['cs_mm']:.4f} ± {r1['cs_sigma_mm']:.4f} at {f1:.2f} Å, "
            f"round 2 {r2['cs_mm']:.4f} ± {r2['cs_sigma_mm']:.4f} at {f2:.2f} Å (z {z2:+.2f}); "
            f"right nominal {right['cs_refined_mm']:.4f} ± {right['cs_sigma_mm']:.4f} "
            f"(z {zr:+.2f})")
    z2, zr, gap, sigma = (np.array(c) for c in zip(*rows))
    log(f"round 2 against the truth: {z_summary(z2)}")
    log(f"right nominal against the truth: {z_summary(zr)}")
    log(f"round 2 minus the right-nominal result: median |gap| {np.median(np.abs(gap)):.4f} mm, "
        f"max {np.abs(gap).max():.4f} mm (median sigma {np.median(sigma):.4f} mm)")


if __name__ == "__main__":
    main()
