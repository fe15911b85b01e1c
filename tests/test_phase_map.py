"""The 2D phase maps tell an isotropic k^4 change (Cs) from an anisotropic one (magnification
anisotropy), and the report shows them."""

from __future__ import annotations

import numpy as np
import pytest

from csrefine.atomic_map import density_map
from csrefine.model import OpticsGroup
from csrefine.options import RefineOptions
from csrefine.pipeline import refine
from csrefine.simulate import ArrayImages, random_particles, simulate_images


@pytest.fixture(scope="module")
def volume(structure):
    return density_map(structure, 64, 1.2, b_factor_A2=10.0)


def _refine(volume, truth: OpticsGroup, seed: int):
    rng = np.random.default_rng(seed)
    parts = random_particles(600, rng)
    images = ArrayImages(simulate_images(volume, truth, parts, 0.3, rng))
    nominal = {1: OpticsGroup(1, "g", 300.0, 2.7, 0.1, 1.2, 64)}
    halves = tuple(volume + rng.normal(0, 0.003 * volume.max(), volume.shape).astype(np.float32)
                   for _ in range(2))
    return refine(nominal, parts, images, halves,
                  options=RefineOptions(threads=2, min_particles=50)).groups[0]


def test_a_cs_change_is_isotropic_and_an_anisotropic_magnification_is_not(volume):
    cs = _refine(volume, OpticsGroup(1, "g", 300.0, 3.2, 0.1, 1.2, 64), seed=1)
    aniso = _refine(volume, OpticsGroup(1, "g", 300.0, 2.7, 0.1, 1.2, 64,
                                        mag_matrix=np.array([[1.015, 0.0], [0.0, 0.985]])),
                    seed=2)
    print("Cs 3.2:", cs.anisotropy, "| 1.5% anisotropic magnification:", aniso.anisotropy)
    assert cs.anisotropy["isotropic_change_deg_at_band_edge"] > 20
    assert cs.anisotropy["anisotropy_ratio"] < 0.1
    assert aniso.anisotropy["anisotropic_deg_at_band_edge"] > 5 * cs.anisotropy[
        "anisotropic_deg_at_band_edge"]
    pm = cs.curves["phase_map"]
    measured = np.asarray(pm["measured_deg"], dtype=float)
    assert measured.shape == (len(pm["k_axis_per_A"]),) * 2
    # Friedel symmetric: delta(-k) = delta(k)
    both = np.isfinite(measured) & np.isfinite(measured[::-1, ::-1])
    np.testing.assert_allclose(measured[both], measured[::-1, ::-1][both])


def test_the_report_draws_the_maps_and_says_how_isotropic_the_change_is(volume, tmp_path):
    from csrefine.report import refinement_pages, write_pdf
    from csrefine.report_text import interpretation
    from csrefine.results import Refinement

    g = _refine(volume, OpticsGroup(1, "g", 300.0, 3.2, 0.1, 1.2, 64), seed=3)
    text = "\n".join(interpretation(g))
    assert "the change is isotropic, as a Cs or pixel-size change is" in text
    refinement = Refinement([g], np.linspace(1, 0, 33), 2.4, g.band_A, "cpu", {}, 1.2)
    write_pdf(tmp_path / "logfile.pdf", refinement_pages(refinement))
    assert (tmp_path / "logfile.pdf").stat().st_size > 10_000
