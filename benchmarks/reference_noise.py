"""How much of the half maps' noise does the jackknife sigma miss? (figures, not a test)

The jackknife over particle cells sees every error that differs between cells: image noise, and the
half maps' noise as particles meet it one by one (image noise times map noise, different for every
particle). What it cannot see is the part of the map noise that moves all particles' Cs alike.
This script measures that shared part by linear propagation (``noise_propagation.py`` here) on a
real data set and prints it next to the jackknife sigma, per optics group.

  python benchmarks/reference_noise.py --particles P.star --half-maps H1 H2 --mask M [--j 2]
  python benchmarks/reference_noise.py --data benchmarks/data/n10000_box192_px0.85_cs3_seed1_chainsABC_200kV
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import noise_propagation as reference_noise  # noqa: E402

from csrefine.fit import parameter_scales  # noqa: E402
from csrefine.forward import pixel_terms  # noqa: E402
from csrefine.fourier import band_limited_box, band_limited_map, make_band  # noqa: E402
from csrefine.group_fit import BINS_PER_SHELL, CELLS_PER_SUBSET, fit_group, summarise_group  # noqa: E402
from csrefine.options import RefineOptions  # noqa: E402
from csrefine.pipeline import accumulate_group, assign_cells, load_backend, reference_for  # noqa: E402
from csrefine.references import (  # noqa: E402
    REFERENCE_PAD,
    group_references,
    prepare_references,
    reference_margin,
)  # noqa: E402
from csrefine.relion.run import load_inputs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a benchmark data set (parts.star, run_half*, mask.mrc)")
    ap.add_argument("--particles", type=Path)
    ap.add_argument("--half-maps", nargs=2, type=Path)
    ap.add_argument("--mask", type=Path)
    ap.add_argument("--j", type=int, default=2)
    ap.add_argument("--sample-per-half", type=int, default=reference_noise.SAMPLE_PER_HALF)
    ap.add_argument("--realisations", type=int, default=reference_noise.REALISATIONS)
    args = ap.parse_args()
    if args.data:
        d = args.data
        args.particles = d / "parts.star"
        args.half_maps = [d / "run_half1_class001_unfil.mrc", d / "run_half2_class001_unfil.mrc"]
        args.mask = d / "mask.mrc"
    reference_noise.SAMPLE_PER_HALF = args.sample_per_half
    reference_noise.REALISATIONS = args.realisations
    inputs = load_inputs(args.particles, *args.half_maps, args.mask,
                         base_dir=args.particles.parent)
    options = RefineOptions(threads=args.j).validate()
    setup = prepare_references(inputs.groups, inputs.half_maps, inputs.mask,
                               inputs.map_pixel_size_A, options)
    px, (low_A, high_A) = setup.map_pixel_size_A, setup.band_A
    backend = load_backend("cpu")
    box = inputs.half_maps[0].shape[0]
    k_max_px = px / high_A
    margin = reference_margin(inputs.groups)  # as prepare_references built the references
    n_crop = band_limited_box(box, k_max_px * margin)
    smalls = [band_limited_map(m, n_crop, options.threads) for m in inputs.half_maps]
    noise = reference_noise.NoiseModel.from_cropped_halves(
        smalls[0], smalls[1], k_max_px * box / n_crop, REFERENCE_PAD, margin, box, options.threads)
    n_cells = options.subsets * CELLS_PER_SUBSET
    print(f"{args.particles}: band {low_A:.1f}-{high_A:.2f} Å; sample {args.sample_per_half} "
          f"particles per half set, {args.realisations} noise realisations")
    for gid, group in sorted(inputs.groups.items()):
        positions = np.flatnonzero(inputs.particles.optics_group == gid)
        sub = inputs.particles.subset(positions)
        band = make_band(group.box_size, group.pixel_size_A, 1.0 / low_A, 1.0 / high_A)
        refs = group_references(setup.references, group, px)
        cells = assign_cells(positions.size, options.subsets, CELLS_PER_SUBSET,
                             options.seed + gid)
        stats = accumulate_group(group, positions, sub, inputs.images, refs, band, cells,
                                 n_cells, backend, options).stats
        fitted = fit_group(group, stats, band, positions.size, options)
        result = summarise_group(group, positions.size, fitted, [low_A, high_A], options)
        t0 = time.monotonic()
        terms = pixel_terms(group, band)
        best = fitted.best
        steps = 0.01 * parameter_scales(fitted.model, float(np.sqrt(terms.k2.max())))
        sens = reference_noise.pixel_sensitivity(
            fitted.radial, fitted.radial.sums.sum(axis=0), fitted.model, best.defocus_offset_A,
            best.cs_change_mm, best.hessian, steps, terms, np.hypot(band.kx_px, band.ky_px) * band.box,
            band.friedel_weight, BINS_PER_SHELL)
        which = {h: reference_for(h, options.reference_half) for h in (1, 2)}
        variance, error = reference_noise.shared_variance(sens, terms, sub, refs, which, noise,
                                                          options.seed + gid)
        bound = np.sqrt(max(variance, 0.0) + 2 * error)  # about 95% upper bound
        jack = result.cs_sigma_mm
        print(f"optics group {gid}: {positions.size} particles, Cs {result.cs_refined_mm:.4f} mm, "
              f"jackknife sigma {jack:.4f} mm; shared half-map noise: variance "
              f"{variance:.2e} ± {error:.1e} mm^2, sigma <= {bound:.5f} mm ({bound / jack:.1%} "
              f"of the jackknife's; in quadrature the sigma would grow by at most "
              f"{np.hypot(jack, bound) / jack - 1:.2%}), {time.monotonic() - t0:.1f} s")

if __name__ == "__main__":
    main()
