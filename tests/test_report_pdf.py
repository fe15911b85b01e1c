"""logfile.pdf and csrefine.json of a real refinement: the expected pages, all of one size; page 1
leads with the headline and the status of each group; no text leaves its page or overlaps other
text (table cells fit); many groups flow onto further pages; the JSON's curves are compact."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from matplotlib.text import Text

from csrefine.atomic_map import density_map
from csrefine.calibration_report import CalibrationOutcome
from csrefine.model import OpticsGroup
from csrefine.options import RefineOptions
from csrefine.pipeline import refine
from csrefine.report import refinement_pages, report_dict, write_json, write_pdf
from csrefine.report_layout import PAGE_SIZE_IN, new_page
from csrefine.report_text import PixelVerdict, headline, status

#: A4 landscape in PDF points.
PAGE_PT = (round(PAGE_SIZE_IN[0] * 72, 2), round(PAGE_SIZE_IN[1] * 72, 2))


@pytest.fixture(scope="module")
def refinement(structure):
    """A real refinement of 600 simulated particles (true Cs 3.2 mm, nominal 2.7)."""
    from csrefine.simulate import ArrayImages, random_particles, simulate_images

    volume = density_map(structure, 64, 1.2, b_factor_A2=10.0)
    rng = np.random.default_rng(4)
    truth = OpticsGroup(1, "optics one", 300.0, 3.2, 0.1, 1.2, 64)
    parts = random_particles(600, rng)
    images = ArrayImages(simulate_images(volume, truth, parts, 0.3, rng))
    halves = tuple(volume + rng.normal(0, 0.003 * volume.max(), volume.shape).astype(np.float32)
                   for _ in range(2))
    return refine({1: replace(truth, cs_mm=2.7)}, parts, images, halves,
                  options=RefineOptions(threads=2, min_particles=50))


def _page_sizes(path) -> list[tuple[float, float]]:
    """The MediaBox of every page (matplotlib writes page objects uncompressed)."""
    boxes = re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", path.read_bytes())
    return [(round(float(w), 2), round(float(h), 2)) for w, h in boxes]


def _pdf_text(path, page: int) -> str | None:
    if shutil.which("pdftotext") is None:
        return None
    out = subprocess.run(["pdftotext", "-f", str(page), "-l", str(page), str(path), "-"],
                         capture_output=True, text=True, check=True).stdout
    return " ".join(out.replace("\xa0", " ").split())


def test_logfile_has_the_expected_pages_all_of_one_size(refinement, tmp_path):
    path = tmp_path / "logfile.pdf"
    write_pdf(path, refinement_pages(refinement))
    assert _page_sizes(path) == [PAGE_PT] * 4  # summary, details, FSC, the group
    g = refinement.groups[0]
    verdict = PixelVerdict("Cs", 1.2001, 0.0002, 1.2, g.cs_refined_mm, g.cs_sigma_mm)
    calibration = CalibrationOutcome({}, ["Pixel size calibrated against the atomic model: ..."],
                                     [("Pixel-size calibration", new_page())], {1: verdict})
    write_pdf(path, refinement_pages(refinement, calibration,
                                     ["FSC 0.143: 3.06 Å → 2.27 Å with the refined Cs"])
              + [("Rounds", new_page(), {})])
    assert _page_sizes(path) == [PAGE_PT] * 6
    text = _pdf_text(path, 1)
    if text is not None:  # poppler-utils: page 1's words
        assert text.startswith("csrefine: Cs per optics group")
        assert headline(g, verdict, True)[0] in text and "use refined Cs" in text
        assert "The atomic model confirms the pixel size" in text
        assert "FSC 0.143: 3.06 Å → 2.27 Å" in text
        assert "Details per group" in _pdf_text(path, 2)


def _texts(fig) -> list[Text]:
    fig.canvas.draw()
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_no_text_leaves_its_page_or_overlaps_other_text(refinement):
    """Every page's text lies inside the page, and on the text pages no two pieces of text
    overlap: table cells fit, wrapped lines do not run into each other."""
    g = refinement.groups[0]
    long = replace(g, optics_group=2, name="a group with a rather long name of its own",
                   refined=False, reason="resolution too low: the band 20.0-9.0 Å is too narrow")
    crowded = replace(refinement, groups=[g, long])
    pages = refinement_pages(crowded)
    text_pages = [fig for title, fig, _ in pages if title.startswith(("Summary", "Details"))]
    for fig in [fig for _, fig, _ in pages]:
        renderer = fig.canvas.get_renderer()
        for t in _texts(fig):
            box = t.get_window_extent(renderer)
            assert box.x0 >= -1 and box.y0 >= -1, t.get_text()
            assert box.x1 <= fig.bbox.width + 1 and box.y1 <= fig.bbox.height + 1, t.get_text()
    for fig in text_pages:
        boxes = [(t.get_text(), t.get_window_extent(fig.canvas.get_renderer()).shrunk(0.97, 0.9))
                 for t in _texts(fig)]
        for i, (a, box_a) in enumerate(boxes):
            for b, box_b in boxes[i + 1:]:
                assert not box_a.overlaps(box_b), (a, b)
    assert status(long) == "not refined: resolution too low"


def test_many_groups_flow_onto_further_summary_pages(refinement):
    """Thirty optics groups (e.g. beam-tilt classes): the summary continues on further pages,
    and the cryoSPARC event log's raw data stays aligned with the figures."""
    g = refinement.groups[0]
    many = replace(refinement, groups=[replace(g, optics_group=i, name=f"opticsGroup{i}")
                                       for i in range(1, 31)])
    pages = refinement_pages(many)
    titles = [title for title, _, _ in pages]
    assert titles[:2] == ["Summary", "Summary, page 2"] and "Half-map FSC" in titles
    assert all(json.dumps(raw) for _, _, raw in pages)
    assert sum(t.startswith("Optics group") for t in titles) == 30


def test_csrefine_json_keeps_the_curves_compactly(refinement, tmp_path):
    content = report_dict(refinement, {"particles": "p.star"}, {"warnings": []})
    path = tmp_path / "csrefine.json"
    write_json(path, content)
    assert json.loads(path.read_text()) == content
    curves = content["groups"][0]["curves"]
    for name in ("k2", "measured_delta_rad", "fit_delta_rad", "log_likelihood", "cs_axis_mm"):
        assert all(v is None or float(f"{v:.4g}") == v for v in curves[name]), name
    rows = curves["phase_map"]["measured_deg"]
    assert all(v is None or round(v, 1) == v for row in rows for v in row)
    lines = path.read_text().splitlines()
    assert any(line.strip().startswith('"k2": [') and line.rstrip().endswith("],")
               for line in lines)  # an array of numbers on one line
    assert len(lines) < 200 + len(rows) * 3
    assert "refine" in content["timings_s"] and "total" not in content["timings_s"]
