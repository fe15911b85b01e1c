"""The words of the report: the pixel-size alternative offered only where it is plausible; one
headline and one status per group that never contradict the full text; cryoSPARC's numbering."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from csrefine.interpret import pixel_size_if_cs_nominal_A
from csrefine.report_text import (
    PLAUSIBLE_PIXEL_ERROR,
    PixelVerdict,
    headline,
    interpretation,
    interpretation_text,
    resolution_text,
    status,
    summary_table,
)
from csrefine.results import GroupResult, Refinement


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
    cs_apparent = 2.7 * 1.02**4
    text = "\n".join(interpretation(_group(2.7, cs_apparent)))
    assert "Alternatively" in text and "0.9804 Å" in text and "(-1.96%)" in text
    assert "only an absolute ruler (an atomic model) tells which" in text
    # with a model given but no verdict from it (the calibration could not be done): no call
    # for a ruler, the calibration's reason is on its page
    text = "\n".join(interpretation(_group(2.7, cs_apparent), model_given=True))
    assert "Alternatively" in text and "ruler" not in text
    assert "the atomic model could not tell which (see the calibration)" in text


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
    assert "Cs = 3.000 ± 0.010 mm, of which 0.294 mm were held by Z4⁰" in text


# ------------------------------------------------------------------------------------------
# Page 1: one headline and one status per group, in plain words and never contradicting the text

def not_refined_result(reason="too few particles (40 < 100)", name="g"):
    return replace(_group(2.7, 2.7), refined=False, reason=reason, cs_sigma_mm=None,
                   cs_change_z=None, name=name)


def test_headline_of_a_significant_change_says_how_far_and_where_it_matters():
    g = _group(2.7, 2.998, pixel_size_A=1.2, sigma_mm=0.007)
    first, *more = headline(g)
    assert first == ("Optics group 1: Cs 2.998 ± 0.007 mm, 0.30 mm above the nominal 2.700 mm "
                     "(significant: 43 standard errors); matters beyond 3.0 Å.")
    assert "atomic model" in more[0] and "1.1690 Å" in more[0]  # the pixel-size alternative
    assert status(g) == "use refined Cs"


def test_headline_of_a_change_within_the_errors_says_consistent_with_the_nominal():
    g = _group(2.7, 2.692, sigma_mm=0.005)
    assert headline(g) == ["Optics group 1: consistent with the nominal 2.700 mm (Cs 2.692 ± "
                           "0.005 mm, 1.6 standard errors from it)."]
    assert status(g) == "keep nominal Cs"


def test_headline_of_a_group_not_refined_gives_the_short_reason():
    assert headline(not_refined_result()) == ["Optics group 1: not refined (too few particles); Cs "
                                        "stays at the nominal 2.700 mm."]
    assert status(not_refined_result()) == "not refined: too few particles"
    other_split = not_refined_result("the half maps a.mrc and b.mrc do not match the particles' half "
                               "sets (rlnRandomSubset / alignments3D/split): they contain ...")
    assert status(other_split) == "not refined: half maps of another split"


@pytest.mark.parametrize("cs_refined", np.linspace(2.66, 2.74, 33))
def test_the_status_never_contradicts_the_text(cs_refined):
    """A group whose text says "consistent with the nominal Cs" is never told to use the refined
    Cs, and a significant one never to keep the nominal (without an atomic model)."""
    g = _group(2.7, float(cs_refined), sigma_mm=0.01)
    text = "\n".join(interpretation(g))
    consistent = "consistent with the nominal Cs" in text
    assert consistent != ("The change is significant" in text)
    assert status(g) == ("keep nominal Cs" if consistent else "use refined Cs")
    assert ("consistent with the nominal" in headline(g)[0]) == consistent


def test_no_z_on_the_page_and_degrees_as_a_symbol():
    g = _group(2.7, 2.998, pixel_size_A=1.2, sigma_mm=0.007)
    g.anisotropy = {"anisotropic_deg_at_band_edge": 1.3, "isotropic_change_deg_at_band_edge": 90.3,
                    "anisotropy_ratio": 0.014}
    text = "\n".join(headline(g) + interpretation(g))
    assert "z =" not in text and "|z|" not in text and " deg" not in text and "degrees" not in text
    assert "90.3°" in text and "45°" in text


def test_with_an_atomic_model_the_verdict_replaces_the_alternative():
    g = _group(2.7, 2.998, pixel_size_A=1.2, sigma_mm=0.007)
    confirmed = PixelVerdict("Cs", 1.2002, 0.0002, 1.2, 2.999, 0.007)
    text = "\n".join(interpretation(g, confirmed, model_given=True))
    assert "absolute ruler" not in text and "Alternatively" not in text
    assert "The atomic model confirms the pixel size, 1.2002 ± 0.0002 Å (+0.02%)" in text
    assert status(g, confirmed) == "use refined Cs"
    pixel = PixelVerdict("pixel size", 1.169, 0.0002, 1.2, 2.700, 0.007)
    assert status(g, pixel) == "keep nominal Cs, use calibrated pixel"
    assert "the change is the pixel size, not Cs" in headline(g, pixel)[1]
    neither = PixelVerdict("no change", 1.2002, 0.0002, 1.2, 2.694, 0.006)
    sentence = headline(_group(2.7, 2.692, sigma_mm=0.005), neither)[1]
    assert sentence.startswith("The atomic model confirms the pixel size") and "neither:" not in sentence
    # a model that could not calibrate: the text does not ask for one
    failed = "\n".join(interpretation(g, None, model_given=True))
    assert "absolute ruler" not in failed and "could not tell which" in failed


def test_cryosparc_groups_are_numbered_as_cryosparc_numbers_them():
    """The cryoSPARC adapter names group 1 "exposure group 0": reports say that, not "Optics
    group 1 (exposure group 0)", and the table shows whole names and numbers."""
    g0 = replace(_group(2.7, 2.998, sigma_mm=0.007), name="exposure group 0")
    g1 = replace(_group(2.7, 2.69, sigma_mm=0.007), optics_group=2, name="exposure group 1")
    refinement = Refinement([g0, g1], np.linspace(1, 0, 33), 3.0, [20.0, 3.0], "c", {}, 1.0)
    text = interpretation_text(refinement)
    assert text.startswith("Exposure group 0 (1000 particles):") and "Exposure group 1 (" in text
    assert "Optics group" not in text and "optics group" not in text
    table = summary_table(refinement).splitlines()
    assert table[0].startswith("exposure") and table[1].startswith("group")
    assert [row.split()[0] for row in table[3:]] == ["0", "1"]
    assert all(len(row) <= len(table[2]) for row in table)  # every row within the rule


def test_resolution_at_nyquist_is_a_bound():
    assert resolution_text(2.4, 1.2) == "better than 2.40 Å (Nyquist)"
    assert resolution_text(2.62, 1.2) == "2.62 Å"
    assert resolution_text(2.4, None) == "2.40 Å"
