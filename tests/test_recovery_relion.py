"""Recovery of Cs on data simulated with RELION (relion_project + relion_reconstruct half maps).

10,000 particles of the 1BD2 model, box 128, 1.1 A pixels, reconstructions reaching ~2.5 A. Slow
(about a minute and a half per data set on 2 cores); marked ``relion`` and ``slow``.
"""

import json

import pytest
from relion_tools import simulate_dataset

from csrefine.options import RefineOptions
from csrefine.relion.run import run

N = 10_000


def _refine(info, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    res = run(info["star"], info["half1"], info["half2"], out, mask=info["mask"],
              options=RefineOptions(threads=2), base_dir=info["dir"])
    report = json.loads((out / "csrefine.json").read_text())
    print(f"FSC resolution {res.resolution_A:.2f} A, band {res.band_A}, {res.groups[0]}")
    return res, report["groups"][0]


@pytest.mark.relion
@pytest.mark.slow
@pytest.mark.parametrize("cs_true, cs_nominal", [(3.0, 2.7), (2.7, 2.0)])
def test_cs_is_recovered_from_relion_simulations(tmp_path, structure, cs_true, cs_nominal, relion):
    info = simulate_dataset(tmp_path / "data", structure, n=N, cs_true_mm=cs_true,
                            cs_nominal_mm=cs_nominal, seed=int(cs_true * 10))
    res, g = _refine(info, tmp_path)
    # ~2.5 A with the right Cs; half maps reconstructed with a Cs 0.7 mm off reach ~2.9 A.
    assert res.resolution_A < 2.6 if abs(cs_true - cs_nominal) < 0.5 else res.resolution_A < 3.0
    assert g["refined"]
    assert abs(g["cs_refined_mm"] - cs_true) < 0.02
    assert abs(g["cs_refined_mm"] - cs_true) < 4 * g["cs_sigma_mm"] + 0.005


@pytest.mark.relion
@pytest.mark.slow
def test_pixel_size_error_gives_the_predicted_apparent_cs(tmp_path, structure, relion):
    """True pixel 2% larger than nominal, Cs right: the refined (apparent) Cs is Cs*(p_nom/p_true)^4
    and pixel_size_if_cs_nominal_A recovers the true pixel size."""
    p_nom, p_true = 1.1, 1.1 * 1.02
    info = simulate_dataset(tmp_path / "data", structure, n=N, cs_true_mm=2.7, cs_nominal_mm=2.7,
                            pixel_nominal_A=p_nom, pixel_true_A=p_true, seed=7)
    res, g = _refine(info, tmp_path)
    predicted = 2.7 * (p_nom / p_true) ** 4  # the Cs a fit returns at the wrong pixel size
    assert abs(g["cs_refined_mm"] - predicted) < 0.02
    assert abs(g["pixel_size_if_cs_nominal_A"] / p_true - 1) < 0.002
