"""The interpretation text: the pixel-size alternative is offered only where it is plausible."""

from __future__ import annotations

import pytest

from csrefine.interpret import apparent_cs_mm, pixel_size_if_cs_nominal_A
from csrefine.report import PLAUSIBLE_PIXEL_ERROR, interpretation
from csrefine.results import GroupResult


def _group(cs_nominal_mm, cs_refined_mm, pixel_size_A=1.0, sigma_mm=0.01, cs_zernike_mm=0.0):
    return GroupResult(
        optics_group=1, name="g", n_particles=1000, refined=True, reason="refined",
        cs_nominal_mm=cs_nominal_mm, cs_refined_mm=cs_refined_mm, cs_sigma_mm=sigma_mm,
        cs_sigma_curvature_mm=sigma_mm, cs_subsets_mm=[], defocus_offset_A=0.0,
        defocus_offset_sigma_A=1.0, pixel_size_A=pixel_size_A,
        pixel_size_if_cs_nominal_A=pixel_size_if_cs_nominal_A(pixel_size_A, cs_nominal_mm,
                                                              cs_refined_mm),
        resolution_impact_A=3.0, band_A=[20.0, 3.0], voltage_kv=300.0,
        cs_zernike_mm=cs_zernike_mm, cs_change_z=(cs_refined_mm - cs_nominal_mm) / sigma_mm)


def test_small_pixel_error_is_offered_as_alternative():
    # a 2% pixel error makes 2.7 mm look like 2.7 * 1.02^4 = 2.92 mm
    cs_apparent = apparent_cs_mm(2.7, 1.0, 1 / 1.02)
    text = "\n".join(interpretation(_group(2.7, cs_apparent)))
    assert "Alternatively" in text and "0.9804 Å" in text and "(-1.96%)" in text
    assert "only an absolute ruler (an atomic model) tells which" in text
    # with a model given, the calibration that follows tells which: no call for a ruler
    text = "\n".join(interpretation(_group(2.7, cs_apparent), model_given=True))
    assert "Alternatively" in text and "ruler" not in text
    assert "calibration against the given atomic model (below) tells which" in text


@pytest.mark.parametrize("cs_nominal, cs_refined", [(0.01, 0.5), (2.7, 4.5), (2.7, 1.0)])
def test_implausible_pixel_error_is_said_to_be_no_explanation(cs_nominal, cs_refined):
    rel = pixel_size_if_cs_nominal_A(1.0, cs_nominal, cs_refined) - 1
    assert abs(rel) > PLAUSIBLE_PIXEL_ERROR
    text = "\n".join(interpretation(_group(cs_nominal, cs_refined)))
    assert "implausible" in text and "Alternatively" not in text


def test_non_positive_refined_cs_has_no_pixel_alternative():
    text = "\n".join(interpretation(_group(0.01, -0.2)))
    assert "No pixel size explains" in text and "nan" not in text


@pytest.mark.parametrize("cs_refined, significant", [(2.705, False), (2.729, False), (2.731, True),
                                                     (2.6, True)])
def test_significance_is_said_plainly(cs_refined, significant):
    text = "\n".join(interpretation(_group(2.7, cs_refined, sigma_mm=0.01)))
    assert ("No significant change" in text) != significant
    assert ("The change is significant" in text) == significant


def test_the_part_held_by_z40_is_named():
    text = "\n".join(interpretation(_group(2.7, 3.0, cs_zernike_mm=0.294)))
    assert "Cs = 3.000 ± 0.010 mm, of which 0.294 mm were held by Z4^0" in text
