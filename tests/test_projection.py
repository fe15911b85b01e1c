"""Central-slice projector: agreement with real-space projection along z."""
import numpy as np
import pytest
import scipy.fft

from csrefine.fourier import make_band
from csrefine.projection import central_slice_coordinates, make_padded_reference, sample_trilinear


def _blob_map(box, rng):
    vol = np.zeros((box,) * 3, np.float32)
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    for _ in range(12):
        p = rng.uniform(-box / 5, box / 5, 3)
        vol += np.exp(-((x - p[0])**2 + (y - p[1])**2 + (z - p[2])**2) / 8.0)
    return vol


def test_identity_slice_matches_projection_along_z():
    rng = np.random.default_rng(1)
    box = 32
    vol = _blob_map(box, rng)
    band = make_band(box, 1.0, 0.0, 0.3)
    ref = make_padded_reference(vol, 0.3)
    coords = central_slice_coordinates(np.eye(3)[None], band.kx_px, band.ky_px, ref.scale)
    slice_ = sample_trilinear(ref, coords)[0]
    proj = vol.sum(axis=0)  # [y, x], sum along z
    ft = scipy.fft.rfft2(scipy.fft.ifftshift(proj)).ravel()[band.flat_index]
    corr = np.vdot(ft, slice_).real / (np.linalg.norm(ft) * np.linalg.norm(slice_))
    assert corr > 0.999
    assert np.allclose(np.abs(slice_).sum() / np.abs(ft).sum(), 1.0, atol=0.05)


def test_rotation_by_90_degrees_about_y_projects_along_x():
    rng = np.random.default_rng(2)
    box = 32
    vol = _blob_map(box, rng)
    band = make_band(box, 1.0, 0.0, 0.3)
    ref = make_padded_reference(vol, 0.3)
    # A = Ry(90): the observation's z axis is the reference's -x or +x axis.
    from csrefine.geometry import euler_zyz_to_matrix
    a = euler_zyz_to_matrix(0.0, 90.0, 0.0)[None]
    slice_ = sample_trilinear(ref, central_slice_coordinates(a, band.kx_px, band.ky_px, ref.scale))[0]
    # Project the rotated volume directly: observation(x) = reference(A^T x).
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    pts = np.stack([x, y, z], -1) @ a[0]  # rows: A^T (x, y, z)
    from scipy.ndimage import map_coordinates
    rotated = map_coordinates(vol, [pts[..., 2] + box // 2, pts[..., 1] + box // 2, pts[..., 0] + box // 2],
                              order=1)
    ft = scipy.fft.rfft2(scipy.fft.ifftshift(rotated.sum(axis=0))).ravel()[band.flat_index]
    corr = np.vdot(ft, slice_).real / (np.linalg.norm(ft) * np.linalg.norm(slice_))
    assert corr > 0.995


def test_band_counts_every_independent_pixel_once():
    band = make_band(16, 1.0, 0.0, 0.5)
    # Weighted count over the half-plane band equals the count of the full-plane disc.
    kx = np.fft.fftfreq(16)[None, :]
    ky = np.fft.fftfreq(16)[:, None]
    full = (np.hypot(kx, ky) <= 0.5).sum()
    assert band.friedel_weight.sum() == full


def _reference_by_full_fft(vol, k_max_px, pad, margin):
    """The padded reference computed the plain way: rfftn of the whole padded cube, then crop."""
    box = vol.shape[0]
    size = pad * box
    from csrefine.projection import gridding_correct
    padded = np.zeros((size,) * 3, np.float32)
    lo = size // 2 - box // 2
    padded[lo:lo + box, lo:lo + box, lo:lo + box] = gridding_correct(vol, pad)
    ft = scipy.fft.rfftn(scipy.fft.ifftshift(padded))
    radius = int(np.ceil(pad * box * k_max_px * margin)) + 2
    zy = np.arange(-radius, radius + 1) % size
    full = np.empty((zy.size, zy.size, radius + 2), np.complex128)
    for x in range(radius + 2):
        if x <= size // 2:
            full[:, :, x] = ft[np.ix_(zy, zy, [x])][..., 0]
        else:
            mz = (-np.arange(-radius, radius + 1)) % size
            full[:, :, x] = np.conj(ft[np.ix_(mz, mz, [size - x])][..., 0])
    return full


@pytest.mark.parametrize("k_max_px, margin", [(0.25, 1.0), (0.5, 1.1)])
def test_pruned_transform_equals_full_padded_fft(k_max_px, margin):
    vol = np.random.default_rng(3).normal(size=(16, 16, 16)).astype(np.float32)
    ref = make_padded_reference(vol, k_max_px, pad=2, margin=margin)
    full = _reference_by_full_fft(vol, k_max_px, 2, margin)
    assert ref.data.shape == full.shape
    assert np.allclose(ref.data, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())
