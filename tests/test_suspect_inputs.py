"""Inputs that real data sets have and that must never give a confident wrong Cs: particles whose
contrast is the opposite of the maps', absurd pixel values, junk images, a nominal Cs with the
wrong sign, fits that are degenerate, and jobs where no group can be refined.

The example project (conftest.py: two optics groups of 600 particles, true Cs 3.0 and 2.7 mm,
both labelled 2.7) is refined through the RELION path (``csrefine.relion.run.run``) and, for the
contrast, through the cryoSPARC ``.cs`` path too.
"""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from csrefine.backends.cpu_backend import image_moments
from csrefine.errors import InputError
from csrefine.group_fit import failed_fit
from csrefine.images import write_stack
from csrefine.options import RefineOptions
from csrefine.relion.run import run

OPTIONS = RefineOptions(min_particles=50, resolution_high_A=3.4, threads=2)
STACK = "Extract/job001/particles.mrcs"


def _edit_stack(fn) -> np.ndarray:
    """Rewrite the example's stack with ``fn(images)`` (in place); returns the new images."""
    with mrcfile.open(STACK) as m:
        images, px = np.array(m.data), float(m.voxel_size.x)
    images = fn(images)
    write_stack(STACK, images, px)
    return images


def _refine(p, out, options=OPTIONS):
    lines = []
    refinement = run(p["star"], p["half1"], p["half2"], out, mask=p["mask"], options=options,
                     progress=lines.append)
    return refinement, lines, json.loads((Path(out) / "csrefine.json").read_text())


@pytest.fixture()
def clean(example_project, tmp_path):
    """The example's refinement as it is, for comparison (its own copy of the project)."""
    refinement, _, _ = _refine(example_project, tmp_path / "clean")
    return refinement


def test_inverted_contrast_is_said_and_refined_with_the_images_sign_flipped(example_project,
                                                                           clean, tmp_path):
    _edit_stack(lambda images: -images)
    refinement, lines, report = _refine(example_project, tmp_path / "out")
    text = "\n".join(lines)
    for g, c in zip(refinement.groups, clean.groups):
        print(f"group {g.optics_group}: inverted {g.cs_refined_mm:.4f} ± {g.cs_sigma_mm:.4f}, "
              f"as given {c.cs_refined_mm:.4f}; check {g.half_maps}")
        assert g.contrast == "inverted" and g.half_maps["contrast_z"] < -5
        assert g.half_maps["verdict"] != "swapped"
        assert g.refined and abs(g.cs_refined_mm - c.cs_refined_mm) < 1e-9
        assert f"optics group {g.optics_group}: the particles' contrast is inverted" in text
    assert "other way round" not in text
    assert sum("contrast is inverted" in w for w in report["warnings"]) == 2


def test_inverted_contrast_on_the_cryosparc_path(example_project, tmp_path):
    """A .cs whose blob/sign does not match its images (a conversion that lost it)."""
    from csrefine.cryosparc import offline
    from csrefine.cryosparc.convert import cryosparc_dataset_from_relion
    from csrefine.relion.star_io import read_particle_star

    root = example_project["root"]
    dset = cryosparc_dataset_from_relion(read_particle_star(example_project["star"]), root,
                                         base_dir=root)
    dset["blob/sign"] = -1.0  # says the images hold dark protein; they hold light protein
    dset.save(root / "J7_particles.cs")
    lines = []
    refinement = offline.run(root / "J7_particles.cs", example_project["half1"],
                             example_project["half2"], tmp_path / "out",
                             mask=example_project["mask"], project_dir=root, options=OPTIONS,
                             progress=lines.append)
    for g, truth in zip(refinement.groups, example_project["cs_true_mm"]):
        assert g.contrast == "inverted" and g.refined
        assert abs(g.cs_refined_mm - truth) < 3 * g.cs_sigma_mm + 0.01
    assert any("blob/sign" in line and "contrast is inverted" in line for line in lines)


@pytest.mark.parametrize("value", [1e10, 1e20, 3.0e38])
def test_an_absurd_pixel_is_refused_naming_the_image(example_project, tmp_path, value):
    def hot(images):
        images[7, 10, 10] = value
        return images

    _edit_stack(hot)
    with pytest.raises(InputError) as exc:
        _refine(example_project, tmp_path / "out")
    message = str(exc.value)
    print(message)
    assert message.startswith(f"image 8 of {STACK}") and "not image data" in message
    assert not (tmp_path / "out").exists()


def test_junk_images_move_cs_by_less_than_its_sigma(example_project, clean, tmp_path):
    """3% of the images replaced by junk: pure noise, a strong gradient, a sharp edge, a bright
    blob. The unusual ones are down-weighted; none moves Cs by its sigma."""
    rng = np.random.default_rng(5)

    def junk(images):
        n, box = len(images), images.shape[1]
        scale = float(images.std())
        yy, xx = np.mgrid[:box, :box]
        picks = rng.choice(n, int(0.03 * n), replace=False)
        for k, i in enumerate(picks):
            kind = k % 4
            if kind == 0:
                images[i] = rng.normal(0, scale, (box, box))
            elif kind == 1:
                images[i] += 40 * scale * xx / box
            elif kind == 2:
                images[i] += 25 * scale * (xx > box // 3)
            else:
                images[i] += 30 * scale * np.exp(-((xx - box / 3) ** 2 + (yy - box / 2) ** 2) / 20)
        return images

    _edit_stack(junk)
    refinement, _, report = _refine(example_project, tmp_path / "out")
    for g, c in zip(refinement.groups, clean.groups):
        moved = abs(g.cs_refined_mm - c.cs_refined_mm)
        print(f"group {g.optics_group}: {g.cs_refined_mm:.4f} ± {g.cs_sigma_mm:.4f} (clean "
              f"{c.cs_refined_mm:.4f} ± {c.cs_sigma_mm:.4f}), moved {moved / c.cs_sigma_mm:.2f} "
              f"sigma; {g.images_downweighted} images down-weighted")
        assert g.refined and moved < c.cs_sigma_mm
        assert g.images_downweighted >= 9  # the gradients, edges and blobs of its 18 junk images
    assert all(c.images_downweighted == 0 for c in clean.groups)  # clean data untouched
    assert report["groups"][0]["images_downweighted"] == refinement.groups[0].images_downweighted


def test_a_negative_nominal_cs_is_not_refined_and_the_sign_is_named(example_project, tmp_path):
    star = Path(example_project["star"])
    text = star.read_text()
    row = next(line for line in text.splitlines() if line.split()[:1] == ["opticsGroup1"])
    fields = row.split()
    fields[4] = "-" + fields[4]  # rlnSphericalAberration of the example's optics table
    star.write_text(text.replace(row, " ".join(fields)))
    refinement, lines, _ = _refine(example_project, tmp_path / "out")
    g = refinement.group(1)
    print(g.reason)
    assert g.cs_nominal_mm == -2.7 and not g.refined
    assert "outside the ±1.5 mm search" in g.reason and "sign" in g.reason
    assert refinement.group(2).refined


def test_a_job_that_refines_nothing_says_so_first_and_last(example_project, tmp_path):
    refinement, lines, _ = _refine(example_project, tmp_path / "out",
                                   RefineOptions(min_particles=5000, resolution_high_A=3.4))
    assert not any(g.refined for g in refinement.groups)
    results = [i for i, line in enumerate(lines) if line.startswith("NO OPTICS GROUP WAS REFINED")]
    assert len(results) == 2 and results[-1] == len(lines) - 1
    first = lines[results[0]]
    assert "optics group 1: too few particles (600 < 5000)" in first
    assert "optics group 2: too few particles" in first and "\n" not in first


@pytest.mark.parametrize("change, sigma, subsets, expect", [
    (0.3, 0.007, [0.29, 0.31, 0.30], None),
    (0.3, 0.0, [0.3, 0.3, 0.3], "degenerate"),
    (0.3, 0.007, [0.3, 0.3, 0.3], "degenerate"),
    (1.5, 0.001, [1.5, 1.49, 1.5], "edge of the ±1.5 mm search"),
    (-1.4999, 0.001, [-1.5, -1.49, -1.5], "edge of the ±1.5 mm search"),
    (5.7, 0.001, [5.7, 5.69, 5.7], "outside the ±1.5 mm search"),
    (0.3, float("nan"), [0.29, 0.31, 0.30], "too uncertain"),
    (0.3, 0.9, [0.29, 0.31, 0.30], "too uncertain"),
])
def test_fits_that_cannot_be_reported_as_refined(change, sigma, subsets, expect):
    reason = failed_fit(change, sigma, subsets, 2.7 + change, 2.7, RefineOptions())
    assert (reason is None) if expect is None else (expect in reason)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_image_moments_are_numpys_in_float64(threads):
    """The screen's per-image extreme deviation and variance, as numpy computes them in float64
    (an offset and an outlier included; any thread count)."""
    rng = np.random.default_rng(4)
    images = (rng.standard_normal((7, 36, 36)) * 3 + 1000).astype(np.float32)
    images[2, 5, 7] = -2.0e4
    deviation, variance = image_moments(images, threads)
    flat = images.reshape(7, -1).astype(np.float64)
    mean = flat.mean(axis=1)
    np.testing.assert_allclose(variance, flat.var(axis=1), rtol=1e-9)
    np.testing.assert_allclose(deviation, np.maximum(flat.max(1) - mean, mean - flat.min(1)),
                               rtol=1e-12)
