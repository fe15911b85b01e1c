"""Pixel-size calibration against a docked atomic model (csrefine.calibrate).

Synthetic half maps of 1BD2 (box 72, 2.0 A/pixel): the true object sampled at p_true, plus white
noise per half map; the model is docked at the nominal pixel size (its centroid on voxel box//2).
"""


from dataclasses import replace

import gemmi
import numpy as np
import pytest

from csrefine.atomic_map import PACKAGED_MODEL, density_map
from csrefine.calibrate import (
    CalibrationSettings,
    apply_calibration,
    calibrate_pixel_size,
    centroid_A,
    group_verdict,
    model_mask,
    reexpress_cs_defocus,
)
from csrefine.calibrate.records import calibration_json
from csrefine.errors import InputError

BOX, PX = 72, 2.0


@pytest.fixture(scope="module")
def structure():
    st = gemmi.read_structure(str(PACKAGED_MODEL))
    st.remove_hydrogens()
    return st


def transformed(st, rotation=None, shift=(0.0, 0.0, 0.0), chains=None):
    """Copy of ``st`` rotated about its centroid (``rotation``: 3x3, default none), then shifted
    (A); optionally only ``chains``."""
    rotation = np.eye(3) if rotation is None else rotation
    c = centroid_A(st)
    out = st.clone()
    for model in out:
        if chains:
            for name in [ch.name for ch in model if ch.name not in chains]:
                model.remove_chain(name)
        for ch in model:
            for res in ch:
                for a in res:
                    x = rotation @ (np.array([a.pos.x, a.pos.y, a.pos.z]) - c) + c + shift
                    a.pos = gemmi.Position(*x)
    return out


@pytest.fixture(scope="module")
def docked(structure):
    """The model docked at the nominal pixel size: centroid at voxel BOX//2."""
    return transformed(structure, shift=(BOX // 2) * PX - centroid_A(structure))


def half_maps(structure, pixel_true, seed, noise=3.0):
    truth = density_map(structure, BOX, pixel_true, b_factor_A2=60.0)
    rng = np.random.default_rng(seed)
    s = truth.std()
    return (truth + rng.normal(0, noise * s, truth.shape).astype(np.float32),
            truth + rng.normal(0, noise * s, truth.shape).astype(np.float32))


@pytest.fixture(scope="module")
def maps_right(structure):
    return half_maps(structure, PX, seed=1)


@pytest.mark.slow
def test_pixel_size_2pct_larger_is_calibrated(structure, docked):
    p_true = 1.02 * PX
    h1, h2 = half_maps(structure, p_true, seed=2)
    cal = calibrate_pixel_size(h1, h2, PX, docked)
    assert abs(cal.pixel_size_calibrated_A / p_true - 1) < 0.002
    assert 0 < cal.pixel_size_sigma_A < 0.002 * p_true
    for p in (cal.pixel_size_half1_A, cal.pixel_size_half2_A):
        assert abs(p / p_true - 1) < 0.003
    assert cal.pixel_size_sigma_A >= max(cal.sigma_curvature_A, cal.sigma_halves_A)
    assert cal.relative_correlation > 0.8 and cal.coverage > 0.9
    assert len(cal.scan_pixel_size_A) == len(cal.scan_score) == 41
    best = cal.scan_pixel_size_A[int(np.argmax(cal.scan_score))]
    assert abs(best / p_true - 1) < 0.003
    assert np.all(np.abs(cal.shift_A) < 1.0)


@pytest.mark.slow
def test_correct_pixel_size_is_confirmed(docked, maps_right):
    h1, h2 = maps_right
    cal = calibrate_pixel_size(h1, h2, PX, docked)
    assert abs(cal.pixel_size_calibrated_A / PX - 1) < 0.002
    assert abs(cal.relative_error) < 0.002


@pytest.mark.slow
def test_docked_with_small_offset_and_given_mask(docked, maps_right):
    """A model docked 1.5 A off still calibrates (the translation is refined), with a user mask."""
    h1, h2 = maps_right
    moved = transformed(docked, shift=(1.5, -1.0, 0.5))
    mask = model_mask(docked, BOX, PX)
    cal = calibrate_pixel_size(h1, h2, PX, moved, mask=mask)
    assert abs(cal.pixel_size_calibrated_A / PX - 1) < 0.002
    assert np.allclose(cal.shift_A, [-1.5, 1.0, -0.5], atol=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["rotated 90 deg", "TCR chains moved"])
def test_model_not_matching_is_refused(docked, maps_right, what):
    h1, h2 = maps_right
    if what == "rotated 90 deg":
        model = transformed(docked, rotation=np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]))
    else:
        model = transformed(docked, shift=(15.0, 0.0, 0.0), chains=["D", "E"])
    with pytest.raises(InputError, match="does not match this map"):
        calibrate_pixel_size(h1, h2, PX, model)


def test_model_not_covering_the_mask_is_refused(docked, maps_right):
    """beta2-microglobulin (chain B, ~12 kDa of ~95) docked right, but the mask is the complex's."""
    h1, h2 = maps_right
    part = transformed(docked, chains=["B"])
    with pytest.raises(InputError, match="covers only"):
        calibrate_pixel_size(h1, h2, PX, part, mask=model_mask(docked, BOX, PX))


def test_model_outside_the_box_is_refused(docked, maps_right):
    h1, h2 = maps_right
    with pytest.raises(InputError, match="outside"):
        calibrate_pixel_size(h1, h2, PX, transformed(docked, shift=(200.0, 0, 0)))


def test_reexpress_cs_and_defocus():
    cs, df = reexpress_cs_defocus(2.5, 10000.0, 1.0, 1.02)
    assert cs == pytest.approx(2.5 * 1.02**4)
    assert df == pytest.approx(10000.0 * 1.02**2)
    # round trip with the apparent values a CTF fit returns for a pixel-size error
    assert reexpress_cs_defocus(2.7 / 1.02**4, 0.0, 1.0, 1.02)[0] == pytest.approx(2.7)


@pytest.mark.parametrize("cs_ref,p_cal,kind", [
    (2.7 / 1.02**4, 1.02, "pixel size"),     # apparent Cs from a 2% pixel error, Cs right
    (3.0, 1.0002, "Cs"),                     # pixel right, Cs off by 0.3 mm
    (3.0 / 1.02**4, 1.02, "both"),           # both wrong
    (2.71, 1.0001, "no change"),             # within the errors
])
def test_verdict(cs_ref, p_cal, kind):
    got, text, cs_cal, sig = group_verdict(cs_ref, 0.02, 2.7, 1.0, p_cal, 0.0008)
    assert got == kind
    assert cs_cal == pytest.approx(cs_ref * p_cal**4)
    assert sig == pytest.approx(np.hypot(p_cal**4 * 0.02, 4 * cs_ref * p_cal**3 * 0.0008))
    assert f"{p_cal:.4f}" in text


def test_verdict_practical_floor_and_not_refined():
    # a 0.05% pixel departure with a tiny sigma is significant but below the 0.01 mm floor
    kind, text, *_ = group_verdict(2.7, 0.001, 2.7, 1.0, 1.0005, 0.00001)
    assert kind == "no change" and "pixel size is confirmed" in text and "too close" in text
    kind, text, cs_cal, sig = group_verdict(2.7, None, 2.7, 1.0, 1.02, 0.001, refined=False)
    assert kind == "not refined" and sig is None and text.startswith("the map's pixel size is")


# The seed's numbers: pixel right (1.1 A), true Cs 3.0 mm labelled 2.7, refined 3.000 +- 0.007.
SEED = dict(cs_refined_mm=3.0, cs_sigma_mm=0.007, cs_nominal_mm=2.7, pixel_nominal_A=1.1)


def _seed_verdict(p_cal, sigma, halves=None, halves_sigma=None):
    return group_verdict(SEED["cs_refined_mm"], SEED["cs_sigma_mm"], SEED["cs_nominal_mm"],
                         SEED["pixel_nominal_A"], p_cal, sigma, pixel_halves_A=halves,
                         pixel_halves_sigma_A=halves_sigma)


def test_half_maps_that_disagree_give_no_pixel_size_verdict():
    """1.1052 +- 0.0023 A from half maps at 1.1054 and 1.1008 (+-0.0006 each, 5.4 combined
    sigma apart): the pixel size is undetermined, the verdict says so and names both halves;
    with the same numbers and consistent halves it would be called (a 7-sigma shift)."""
    kind, text, _, _ = _seed_verdict(1.1052, 0.0023, (1.1054, 1.1008), (0.0006, 0.0006))
    assert kind == "undetermined"
    assert "pixel size is undetermined" in text and "1.1054" in text and "1.1008" in text
    assert "5.4 standard errors apart" in text
    kind, *_ = _seed_verdict(1.1080, 0.0005, (1.1079, 1.1082), (0.0006, 0.0006))
    assert kind == "both"
    # no Cs departure either: nothing changes, and the pixel size is still not called
    kind, text, _, _ = group_verdict(2.71, 0.02, 2.7, 1.1, 1.1052, 0.0023,
                                     pixel_halves_A=(1.1054, 1.1008),
                                     pixel_halves_sigma_A=(0.0006, 0.0006))
    assert kind == "no change" and "pixel size is undetermined" in text


def test_a_shift_below_three_sigma_confirms_the_pixel_size():
    """+0.47% at 2.3 sigma with consistent halves: not significant, the pixel size is confirmed
    in plain words and the departure is Cs."""
    kind, text, _, _ = _seed_verdict(1.1052, 0.0023, (1.1054, 1.1050), (0.0015, 0.0015))
    assert kind == "Cs" and text.startswith("the pixel size is confirmed, 1.1052 ± 0.0023 Å")
    # 3.1 sigma, consistent, above the floor: a pixel-size share of the departure
    kind, text, _, _ = _seed_verdict(1.1052, 0.0017, (1.1054, 1.1050), (0.0015, 0.0015))
    assert kind == "both" and "3.1 standard errors from the nominal" in text


def test_a_pixel_size_too_uncertain_to_split_the_departure_is_undetermined():
    """+-0.86% on the pixel size: 3 sigma of it move Cs by 0.31 mm, more than the 0.30 mm
    departure; at +-0.80% (0.29 mm) the pixel size still confirms that the departure is Cs."""
    kind, text, _, _ = _seed_verdict(1.1010, 0.0095, (1.1000, 1.1020), (0.011, 0.011))
    assert kind == "undetermined" and "too uncertain" in text and "0.312 mm" in text
    assert _seed_verdict(1.1010, 0.0088, (1.1000, 1.1020), (0.011, 0.011))[0] == "Cs"


@pytest.mark.parametrize("cs_ref,p_cal,sigma,halves", [
    (2.7 / 1.02**4, 1.02, 0.0008, (1.0195, 1.0205)), (3.0, 1.0002, 0.0008, (1.0, 1.0004)),
    (3.0 / 1.02**4, 1.02, 0.0008, (1.0195, 1.0205)), (2.71, 1.0001, 0.0008, (1.0, 1.0002)),
    (3.0, 1.0052, 0.0023, (1.0054, 1.0008)), (3.0, 1.001, 0.008, (1.0, 1.002))])
def test_verdict_words(cs_ref, p_cal, sigma, halves):
    """Plain words: never 'neither', never a call for an absolute ruler (a model was given)."""
    _, text, _, _ = group_verdict(cs_ref, 0.02, 2.7, 1.0, p_cal, sigma, pixel_halves_A=halves,
                                  pixel_halves_sigma_A=(0.0006, 0.0006))
    assert "neither" not in text and "ruler" not in text


def test_apply_calibration_keys():
    from csrefine.calibrate import PixelCalibration

    cal = PixelCalibration(1.0, 1.02, 0.0008, 0.0005, 0.0006, 1.0195, 1.0205, 0.7, 0.8, 0.875, 0.9,
                           60.0, [0.0, 0.0, 0.0], 0.98, 3.5, [20.0, 3.5], [1.0], [0.5],
                           sigma_half1_A=0.0007, sigma_half2_A=0.0007)
    groups = [
        {"optics_group": 1, "refined": True, "cs_nominal_mm": 2.7, "cs_refined_mm": 2.7 / 1.02**4,
         "cs_sigma_mm": 0.02, "defocus_offset_A": 100.0, "pixel_size_A": 1.0},
        {"optics_group": 2, "refined": True, "cs_nominal_mm": 2.7, "cs_refined_mm": 3.0 / 1.02**4,
         "cs_sigma_mm": 0.02, "defocus_offset_A": 0.0, "pixel_size_A": 1.0},
    ]
    records = apply_calibration(groups, cal)
    assert [r.cs_at_calibrated_pixel_mm for r in records] == pytest.approx([2.7, 3.0])
    assert [r.kind for r in records] == ["pixel size", "both"]
    assert "the two half maps agree (1.0195 ± 0.0007 and 1.0205 ± 0.0007 Å)" in records[0].pixel_status
    out = calibration_json(cal, records, {1: "one", 2: "two"})
    assert out["pixel_size_calibrated_A"] == 1.02 and out["pixel_size_sigma_A"] == 0.0008
    assert out["cs_at_calibrated_pixel_mm"]["1"] == pytest.approx(2.7)
    assert out["verdict"] == {"1": "one", "2": "two"}
    # the same calibration with half maps 0.0030 A apart: no pixel-size verdict for either group
    records = apply_calibration(groups, replace(cal, pixel_size_half1_A=1.0185,
                                                pixel_size_half2_A=1.0215))
    assert [r.kind for r in records] == ["undetermined", "undetermined"]
    assert records[0].defocus_offset_at_calibrated_pixel_A == pytest.approx(100.0 * 1.02**2)
    import json
    json.dumps(calibration_json(cal, records, {1: "one", 2: "two"}))


@pytest.mark.slow
def test_cropped_calibration_agrees_with_the_whole_box(structure, docked):
    """The cube around the mask, Fourier cropped to the band, holds the information the match
    uses: its pixel size agrees with the whole-box calibration within the sigma (same data; the
    two differ in the grid and in the scan, whose maps are not anti-aliased when cropped, so
    Brent may settle on another of the noisy score's local maxima; a wrong crop or offset would
    be many sigma off). Noisier half maps than above, so that the FSC drops below 0.143 (~7.6 A)
    well before Nyquist (4 A) and the Fourier crop removes shells."""
    p_true = 1.02 * PX
    h1, h2 = half_maps(structure, p_true, seed=2, noise=6.0)
    whole = calibrate_pixel_size(h1, h2, PX, docked, settings=CalibrationSettings(crop=False))
    cropped = calibrate_pixel_size(h1, h2, PX, docked)
    assert whole.grid["fourier_box"] == BOX
    assert cropped.grid["fourier_box"] < BOX  # 2 A pixels, FSC 0.143 well before Nyquist
    sigma = max(whole.pixel_size_sigma_A, cropped.pixel_size_sigma_A)
    assert abs(cropped.pixel_size_calibrated_A - whole.pixel_size_calibrated_A) < sigma
    assert abs(cropped.pixel_size_calibrated_A - p_true) < 3 * cropped.pixel_size_sigma_A
    assert cropped.pixel_size_sigma_A == pytest.approx(whole.pixel_size_sigma_A, rel=0.2)


@pytest.mark.slow
def test_work_is_set_by_the_mask_and_band_not_the_box(structure, docked):
    """The same half maps inside boxes of 112 and 144 (zeros around, the model docked at the same
    place in the object): the cropped grids are the same, smaller than either box, and so is the
    calibrated pixel size; it agrees with the tight box-72 one within a fraction of sigma."""
    h1, h2 = half_maps(structure, 1.02 * PX, seed=5)
    small = calibrate_pixel_size(h1, h2, PX, docked)

    def in_box(big_box):
        o = (big_box - BOX) // 2

        def embed(a):
            out = np.zeros((big_box,) * 3, np.float32)
            out[o:o + BOX, o:o + BOX, o:o + BOX] = a
            return out

        moved = transformed(docked, shift=(o * PX,) * 3)
        return calibrate_pixel_size(embed(h1), embed(h2), PX, moved)

    mid, big = in_box(112), in_box(144)
    for key in ("cube_box", "fourier_box", "model_box"):
        assert big.grid[key] == mid.grid[key], key
    assert mid.grid["cube_box"] < 112
    assert big.pixel_size_calibrated_A == pytest.approx(mid.pixel_size_calibrated_A, rel=1e-5)
    assert abs(big.pixel_size_calibrated_A - small.pixel_size_calibrated_A) < (
        0.5 * small.pixel_size_sigma_A)


@pytest.mark.parametrize("fourier_box", [66, 60, 48])
def test_model_maps_on_a_barely_cropped_grid_match_a_fine_reference(structure, fourier_box):
    """Model maps on a cropped grid nearly as fine as the cube (the model grid can then be only
    1.09x finer): the anti-alias blur divided out stays small enough that the band's shells
    match a map computed on a grid twice as fine, without blur (a blur chosen for 1e-3 aliasing
    at 1.09x would be divided out by ~1e9 at the band's edge, leaving gemmi's truncation)."""
    import scipy.fft

    from csrefine.calibrate.model_maps import ModelMaps
    from csrefine.calibrate.region import CropPlan
    from csrefine.calibrate.target import FourierGrid
    from csrefine.fourier import crop_rfftn

    grid = FourierGrid(fourier_box)
    p = PX * BOX / fourier_box
    models = ModelMaps(structure, grid, CropPlan((0, 0, 0), BOX, fourier_box), p,
                       (fourier_box // 2,) * 3, 20.0)
    ft = models.model_ft(p)
    fine = 2 * BOX
    ref = crop_rfftn(scipy.fft.rfftn(density_map(
        structure, fine, p * fourier_box / fine, b_factor_A2=20.0,
        centre_A=models.centre_A).astype(np.float64)), fourier_box) * (models.model_box / fine) ** 3
    err = np.sqrt(grid.shell_mean(np.abs(ft - ref) ** 2) / grid.shell_mean(np.abs(ref) ** 2))
    edge = fourier_box // 2 - 3  # the band's highest shell
    assert err[fourier_box // 4] < 1e-2
    assert err[edge - 5:edge + 1].max() < 0.15
