"""The reported sigma is honest: over replicate simulations the truth lies within +-1 sigma in
55-80% of them (68% expected for a calibrated Gaussian error)."""

import numpy as np
import pytest

from csrefine.model import OpticsGroup
from csrefine.options import RefineOptions
from csrefine.pipeline import refine
from csrefine.simulate import ArrayImages, random_particles, simulate_images

REPLICATES = 40
pytestmark = pytest.mark.slow  # 40 replicate refinements


@pytest.fixture(scope="module")
def replicate_results(small_map):
    rng = np.random.default_rng(2024)
    box, px = 64, 1.6
    results = []
    for r in range(REPLICATES):
        cs_true = rng.uniform(2.4, 3.2)
        truth = OpticsGroup(1, "g", 300.0, cs_true, 0.1, px, box)
        parts = random_particles(300, rng)
        images = simulate_images(small_map, truth, parts, 1.5, rng)
        halves = tuple(small_map + rng.normal(0, 0.01 * small_map.max(), small_map.shape)
                       .astype(np.float32) for _ in range(2))
        nominal = OpticsGroup(1, "g", 300.0, 2.7, 0.1, px, box)
        res = refine({1: nominal}, parts, ArrayImages(images), halves,
                     options=RefineOptions(device="cpu", resolution_high_A=3.4, min_particles=50,
                                           seed=r, batch_size=300))
        g = res.groups[0]
        results.append((cs_true, g.cs_refined_mm, g.cs_sigma_mm, g.cs_sigma_curvature_mm))
    return np.array(results)


def test_truth_within_one_sigma_in_55_to_80_percent(replicate_results):
    truth, refined, sigma, _ = replicate_results.T
    z = (refined - truth) / sigma
    inside = np.mean(np.abs(z) <= 1.0)
    print(f"jackknife: |z|<=1 in {inside:.0%} of {len(z)}; z rms {np.sqrt(np.mean(z**2)):.2f}")
    assert 0.55 <= inside <= 0.80


def test_jackknife_and_curvature_sigmas_agree(replicate_results):
    _, _, sigma, curvature = replicate_results.T
    ratio = np.median(sigma / curvature)
    print(f"median jackknife/curvature sigma ratio {ratio:.2f}")
    assert 0.6 < ratio < 1.6
