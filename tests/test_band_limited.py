"""Fourier cropping to the band (csrefine.fourier): the calibration's and the references' cost set
by the band, not the box, with the same transform values in the band."""

import numpy as np
import pytest
import scipy.fft

from csrefine.atomic_map import density_map
from csrefine.fourier import band_limited_box, band_limited_map, crop_rfftn, fourier_crop
from csrefine.options import RefineOptions
from csrefine.projection import make_padded_reference, sample_trilinear
from csrefine.references import band_limited_reference


@pytest.mark.parametrize("n,n_out,slab", [(48, 48, 32), (48, 20, 7), (50, 30, 100)])
def test_fourier_crop_is_the_cropped_rfftn(n, n_out, slab):
    v = np.random.default_rng(n_out).normal(size=(n,) * 3).astype(np.float32)
    full = scipy.fft.rfftn(v.astype(np.float64))
    got = fourier_crop(v, n_out, slab=slab)
    want = crop_rfftn(full, n_out)
    assert got.shape == (n_out, n_out, n_out // 2 + 1)
    assert np.abs(got - want).max() < 1e-5 * np.abs(full).max()
    # frequency index j stays index j: the DC term and the first shell are the whole map's
    assert got[0, 0, 0] == pytest.approx(full[0, 0, 0], rel=1e-5)
    assert got[-1, 1, 2] == pytest.approx(full[-1, 1, 2], rel=1e-4)


def test_band_limited_map_keeps_the_band():
    v = np.random.default_rng(0).normal(size=(40,) * 3).astype(np.float32)
    small = band_limited_map(v, 24)
    assert small.shape == (24,) * 3
    np.testing.assert_allclose(crop_rfftn(scipy.fft.rfftn(small.astype(np.float64)), 24),
                               crop_rfftn(scipy.fft.rfftn(v.astype(np.float64)), 24), atol=2e-3)


def test_band_limited_box_follows_the_band():
    assert band_limited_box(400, 0.85 / 3.5) < 0.6 * 400   # 3.5 A at 0.85 A/pixel
    assert band_limited_box(400, 0.85 / 3.5) == band_limited_box(400, 0.85 / 3.5)
    assert band_limited_box(96, 0.5) == 96                 # the band reaches Nyquist: no crop
    assert band_limited_box(400, 0.1) % 2 == 0


def test_reference_from_the_cropped_map_samples_the_same_transform(structure):
    """The padded reference of a map of signal only, built from the map Fourier cropped to the
    band, gives the whole map's values at band coordinates (within 0.5% rms: on the padded grid's even
    points they agree exactly; in between, the whole map's transform also interpolates its content
    beyond the crop, which the margin of shells keeps small)."""
    box, px, high_A = 160, 0.85, 3.5  # 136 A: the model (~100 A long) inside the box
    vol = density_map(structure, box, px, b_factor_A2=30.0)
    k_max_px = px / high_A
    whole = make_padded_reference(vol, k_max_px, 2, 1, margin=1.01)
    cropped = band_limited_reference(vol, k_max_px, RefineOptions(), 1.01)
    assert cropped.radius == whole.radius and cropped.scale == whole.scale
    assert band_limited_box(box, k_max_px * 1.01) < box
    rng = np.random.default_rng(1)
    r = rng.uniform(0.1, 1.0, 5000) * 2 * box * k_max_px
    d = rng.normal(size=(r.size, 3))
    coords = d / np.linalg.norm(d, axis=1)[:, None] * r[:, None]
    a, b = sample_trilinear(whole, coords), sample_trilinear(cropped, coords)
    assert np.sqrt(np.mean(np.abs(a - b) ** 2) / np.mean(np.abs(a) ** 2)) < 0.005
