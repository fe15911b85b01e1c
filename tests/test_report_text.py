"""The interpretation text: the pixel-size alternative is offered only where it is plausible."""

from __future__ import annotations

import pytest

from csrefine.interpret import apparent_cs_mm, pixel_size_if_cs_nominal_A
from csrefine.pipeline import GroupResult
from csrefine.report import PLAUSIBLE_PIXEL_ERROR, interpretation


def _group(cs_nominal_mm, cs_refined_mm, pixel_size_A=1.0):
    return GroupResult(1, "g", 1000, True, "refined", cs_nominal_mm, cs_refined_mm, 0.01, 0.01,
                       [], 0.0, 1.0, pixel_size_A,
                       pixel_size_if_cs_nominal_A(pixel_size_A, cs_nominal_mm, cs_refined_mm),
                       3.0, [20.0, 3.0], 300.0)


def test_small_pixel_error_is_offered_as_alternative():
    # a 2% pixel error makes 2.7 mm look like 2.7 * 1.02^4 = 2.92 mm
    cs_apparent = apparent_cs_mm(2.7, 1.0, 1 / 1.02)
    text = "\n".join(interpretation(_group(2.7, cs_apparent)))
    assert "Alternatively" in text and "0.9804 A" in text and "(-1.96%)" in text


@pytest.mark.parametrize("cs_nominal, cs_refined", [(0.01, 0.5), (2.7, 4.5), (2.7, 1.0)])
def test_implausible_pixel_error_is_said_to_be_no_explanation(cs_nominal, cs_refined):
    rel = pixel_size_if_cs_nominal_A(1.0, cs_nominal, cs_refined) - 1
    assert abs(rel) > PLAUSIBLE_PIXEL_ERROR
    text = "\n".join(interpretation(_group(cs_nominal, cs_refined)))
    assert "implausible" in text and "Alternatively" not in text


def test_non_positive_refined_cs_has_no_pixel_alternative():
    text = "\n".join(interpretation(_group(0.01, -0.2)))
    assert "No pixel size explains" in text and "nan" not in text
