"""The half-map FSC (csrefine.fsc) against its definition on the full complex transform."""

from __future__ import annotations

import numpy as np
import pytest

from csrefine.fsc import default_mask, fsc_curve, resolution_at_threshold, shell_index


def _fsc_by_definition(h1, h2, mask):
    """FSC from numpy's full fftn: sums over every Fourier element of each rounded-radius shell."""
    f1, f2 = np.fft.fftn(h1 * mask), np.fft.fftn(h2 * mask)
    box = h1.shape[0]
    k = np.fft.fftfreq(box) * box
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2
                            + k[None, None, :] ** 2)).astype(int)
    n = box // 2 + 1
    out = np.empty(n)
    for s in range(n):
        sel = shell == s
        a, b = f1[sel], f2[sel]
        out[s] = np.sum(a * b.conj()).real / np.sqrt(np.sum(abs(a) ** 2) * np.sum(abs(b) ** 2))
    return out


@pytest.mark.parametrize("box", [24, 32])
def test_fsc_equals_its_definition_on_the_full_transform(box):
    """The half transform with Friedel weights (2, or 1 on the kx = 0 plane) sums what the full
    transform sums, shell by shell; only the kx = box/2 plane, whose elements are their own
    mates too, is counted twice, as before (it holds no shell inside Nyquist but the corners)."""
    rng = np.random.default_rng(box)
    signal = rng.normal(size=(box,) * 3)
    h1 = (signal + 0.7 * rng.normal(size=signal.shape)).astype(np.float32)
    h2 = (signal + 0.7 * rng.normal(size=signal.shape)).astype(np.float32)
    mask = default_mask(box)
    got = fsc_curve(h1, h2, mask, workers=2)
    want = _fsc_by_definition(h1.astype(float), h2.astype(float), mask.astype(float))
    # shells below Nyquist hold no element of the kx = box/2 plane
    np.testing.assert_allclose(got[:-1], want[:-1], atol=2e-6)
    assert 0.3 < got[1] <= 1.0  # correlated data (signal-to-noise 2 before the mask)


def test_identical_maps_correlate_perfectly_and_independent_noise_does_not():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(32,) * 3).astype(np.float32)
    np.testing.assert_allclose(fsc_curve(a, a), 1.0, atol=1e-6)
    b = rng.normal(size=a.shape).astype(np.float32)
    assert np.abs(fsc_curve(a, b)[4:]).max() < 0.25
    assert resolution_at_threshold(fsc_curve(a, b), 32, 1.0) > 2.0


def test_shell_index_is_the_rounded_radius():
    for box in (16, 30, 64):
        k = np.fft.fftfreq(box)
        kx = np.fft.rfftfreq(box)
        want = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2
                               + kx[None, None, :] ** 2) * box).astype(int)
        np.testing.assert_array_equal(shell_index(box), want)
