"""logfile.pdf without matplotlib (csrefine.pdfplot): a valid PDF that a real reader (Ghostscript)
renders and whose text it extracts; the same page code drives matplotlib and pdfplot; a plain
run never imports matplotlib; the colour map, ticks, fonts and string escapes are right."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from csrefine import pdfplot
from csrefine.atomic_map import density_map
from csrefine.model import OpticsGroup
from csrefine.options import RefineOptions
from csrefine.pdfplot import document, fonts, style
from csrefine.pipeline import refine
from csrefine.simulate import ArrayImages, random_particles, simulate_images

GS = shutil.which("gs")
needs_gs = pytest.mark.skipif(GS is None, reason="Ghostscript (gs) is not installed: "
                                                 "`apt-get install ghostscript` (.ci/run does)")


@pytest.fixture(scope="module")
def refinement(structure):
    """A real refinement of 600 simulated particles (true Cs 3.2 mm, nominal 2.7)."""
    volume = density_map(structure, 64, 1.2, b_factor_A2=10.0)
    rng = np.random.default_rng(4)
    truth = OpticsGroup(1, "optics one", 300.0, 3.2, 0.1, 1.2, 64)
    parts = random_particles(600, rng)
    images = ArrayImages(simulate_images(volume, truth, parts, 0.3, rng))
    halves = tuple(volume + rng.normal(0, 0.003 * volume.max(), volume.shape).astype(np.float32)
                   for _ in range(2))
    return refine({1: truth.with_cs(2.7)}, parts, images, halves,
                  options=RefineOptions(threads=2, min_particles=50))


def _gs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GS, "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", *args],
                          capture_output=True, text=True, timeout=120)


def _xref_offsets_point_at_their_objects(data: bytes) -> None:
    start = int(re.search(rb"startxref\n(\d+)\n%%EOF\n$", data).group(1))
    assert data[start:start + 4] == b"xref"
    lines = data[start:].split(b"\n")
    count = int(lines[1].split()[1])
    for number in range(1, count):
        offset = int(lines[2 + number][:10])
        assert data[offset:].startswith(b"%d 0 obj\n" % number), number


@needs_gs
def test_logfile_pdf_is_read_by_ghostscript_with_its_text_and_pictures(refinement, tmp_path):
    from csrefine.report import write_pdf
    path = tmp_path / "logfile.pdf"
    write_pdf(path, refinement)
    data = path.read_bytes()
    assert data.startswith(b"%PDF-1.4")
    _xref_offsets_point_at_their_objects(data)
    text = _gs("-sDEVICE=txtwrite", "-sOutputFile=-", str(path))
    assert text.returncode == 0 and "Error" not in text.stderr, text.stderr
    g = refinement.groups[0]
    for expected in ("csrefine: Cs per optics group", "Half-map FSC", "optics one",
                     f"{g.cs_refined_mm:.3f} ± {g.cs_sigma_mm:.3f}", "resolution (Å)",
                     "measured phase change", "log-likelihood", "nominal 2.700 mm"):
        assert expected in text.stdout, expected
    pages = _gs("-sDEVICE=png16m", "-r40", f"-sOutputFile={tmp_path}/page-%d.png", str(path))
    assert pages.returncode == 0, pages.stderr
    from PIL import Image
    rendered = sorted(tmp_path.glob("page-*.png"))
    assert len(rendered) == 3
    for png in rendered:
        pixels = np.asarray(Image.open(png).convert("RGB"), dtype=int)
        assert (pixels.sum(axis=2) < 300).mean() > 0.001, f"{png.name} is blank"
    group_page = np.asarray(Image.open(rendered[2]).convert("RGB"), dtype=int)
    r, gr, b = group_page[..., 0], group_page[..., 1], group_page[..., 2]
    assert ((r > 150) & (b < 100) & (gr < 100)).sum() > 50, "no red in the phase maps"
    assert ((b > 120) & (r < 100)).sum() > 50, "no blue in the phase maps"


def test_the_same_page_code_makes_matplotlib_and_pdfplot_figures(refinement):
    from csrefine.report import figures
    lite = figures(refinement, plt=pdfplot)
    mpl = figures(refinement)
    assert [t for t, _ in lite] == [t for t, _ in mpl] == ["Summary", "Half-map FSC",
                                                           "Optics group 1"]
    for (_, a), (_, b) in zip(lite, mpl):
        visible = [ax for ax in b.axes if ax.axison and ax.get_label() != "<colorbar>"]
        assert len([ax for ax in a.axes if ax.visible]) == len(visible)
    import matplotlib.pyplot as plt
    for _, fig in mpl:
        plt.close(fig)


def test_a_run_writes_logfile_pdf_without_importing_matplotlib(refinement, tmp_path):
    import pickle
    blob = tmp_path / "refinement.pkl"
    blob.write_bytes(pickle.dumps(refinement))
    code = ("import pickle, sys; from csrefine.report import write_pdf; "
            f"write_pdf({str(tmp_path / 'l.pdf')!r}, pickle.load(open({str(blob)!r}, 'rb'))); "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "l.pdf").stat().st_size > 10_000


def test_colour_map_ends_and_bad_pixels():
    out = style.colormap_rgb(np.array([-1.0, 1.0, 0.0, np.nan, 5.0]), -1.0, 1.0)
    assert tuple(out[0]) == (0x05, 0x30, 0x61)  # RdBu_r: low is dark blue
    assert tuple(out[1]) == (0x67, 0x00, 0x1F)  # high is dark red
    assert tuple(out[2]) == (0xF7, 0xF7, 0xF7)  # the middle is near white
    assert tuple(out[3]) == style.BAD_RGB
    assert tuple(out[4]) == tuple(out[1])  # clipped


@pytest.mark.parametrize("lo,hi,expected", [
    (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (-60.0, 60.0, [-60.0, -40.0, -20.0, 0.0, 20.0, 40.0, 60.0]),
    (2.93, 3.17, [2.95, 3.0, 3.05, 3.1, 3.15]),
])
def test_ticks_fall_on_round_steps_inside_the_range(lo, hi, expected):
    np.testing.assert_allclose(style.nice_ticks(lo, hi), expected)


def test_tick_labels_use_the_fewest_decimals_that_tell_them_apart():
    assert style.tick_labels([0.0, 0.25, 0.5]) == ["0.00", "0.25", "0.50"]
    assert style.tick_labels([-20.0, 0.0, 20.0]) == ["-20", "0", "20"]
    assert style.tick_labels([-0.0]) == ["0"]


def test_fonts_encode_greek_in_symbol_and_replace_what_they_cannot_show():
    runs = fonts.runs("Cs ± σ Å 中")
    # widths: C 722 + s 500 + space 278 + ± 584 + space 278; σ 603; space + Å 667 + space + ? 556
    assert runs == [("F1", b"Cs \xb1 ", 2362), ("F3", b"s", 603), ("F1", b" \xc5 ?", 1779)]
    assert fonts.text_width("WW", 10) == pytest.approx(2 * 9.44)
    assert fonts.text_width("WW", 10, bold=True) == pytest.approx(2 * 9.44)


def test_pdf_strings_escape_parentheses_backslashes_and_high_bytes():
    assert document._pdf_string(b"a(b)c\\d\xb1") == b"(a\\(b\\)c\\\\d\\261)"


def test_paths_break_at_nan_like_matplotlib():
    page = document.Page(100, 100)
    page.polyline([0, 1, np.nan, 3, 4], [0, 1, 2, 3, 4])
    assert page.ops[-1].count(b" m") == 2 and page.ops[-1].endswith(b" S")
