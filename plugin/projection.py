"""Central-slice projection from a padded, gridding-corrected 3D transform (RELION's scheme).

The half map (box^3, centre at index box//2) is divided by sinc^2(r / (pad*box)) in real space
(the transform of trilinear interpolation), zero-padded to pad*box, and transformed with
``rfftn(ifftshift(.))``. Only frequencies within the band's k_max are kept: the stored array
``data[z + R, y + R, x]`` holds kz, ky in [-R, R] and kx in [0, R] in padded-grid units. A 2D
frequency (kx, ky) in cycles per *particle-box* pixel samples the 3D transform at
pad*box * A^T (kx, ky, 0) (in padded-grid units); points with x < 0 are read from their Friedel
mate (negated coordinate, complex conjugate).

With numpy's unnormalised FFTs, the rfft2 of a projection image (sum along z of the map, in
pixel units) equals the central slice of the unpadded map's rfftn; the padded transform
sampled at pad * k gives the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.fft


@dataclass(frozen=True)
class PaddedReference:
    """Cropped, padded 3D transform of one half map.

    data : complex64 array, shape (2R+1, 2R+1, R+2), indexed [z + R, y + R, x].
    radius : R, the largest |coordinate| stored, in padded-grid units.
    box : the map's box size (pixels); pad : padding factor.
    particle_scale : (map pixel size) / (particle pixel size) for particles whose pixel size
        differs from the map's (optics groups of another detector or magnification); 1 otherwise.
    """

    data: np.ndarray
    radius: int
    box: int
    pad: int
    particle_scale: float = 1.0

    @property
    def scale(self) -> float:
        """Factor from cycles per particle pixel to padded-grid units: pad * box *
        particle_scale (a frequency k_px / p_particle in 1/A sits at k_px / p_particle * pad *
        box * p_map on the padded grid)."""
        return float(self.pad * self.box * self.particle_scale)


def for_particles(ref: PaddedReference, map_pixel_size_A: float,
                  particle_pixel_size_A: float) -> PaddedReference:
    """``ref`` sampled for particles of another pixel size (same data, rescaled frequencies),
    as RELION projects one map for optics groups of different pixel and box sizes."""
    ratio = float(map_pixel_size_A) / float(particle_pixel_size_A)
    if ratio == ref.particle_scale:
        return ref
    return replace(ref, particle_scale=ratio)


def gridding_correct(volume: np.ndarray, pad: int) -> np.ndarray:
    """Divide a real-space map by sinc^2(r / (pad*box)), r in pixels from the centre box//2."""
    box = volume.shape[0]
    c = (np.arange(box) - box // 2).astype(np.int32)
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    # sinc^2 per distinct integer r^2 (a table of 3 (box/2)^2 values), looked up per voxel
    table = np.sinc(np.sqrt(np.arange(int(r2.max()) + 1)) / (pad * box)) ** 2
    return (volume / table[r2]).astype(np.float32)


def _pad_centre_out(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Zero-pad axis ``axis`` of ``a`` (length box, origin already rolled to index 0) to
    ``size``, inserting the zeros in the middle so that negative offsets stay at the end."""
    box = a.shape[axis]
    h = box // 2
    shape = list(a.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=a.dtype)
    view, src = np.moveaxis(out, axis, 0), np.moveaxis(a, axis, 0)  # views: axis first
    view[:h] = src[:h]
    view[size - (box - h):] = src[h:]
    return out


def make_padded_reference(volume: np.ndarray, k_max_px: float, pad: int = 2,
                          workers: int = 1, margin: float = 1.0) -> PaddedReference:
    """Build the :class:`PaddedReference` of a cubic real-space map.

    Parameters
    ----------
    volume : (box, box, box) float array, centre at index box//2.
    k_max_px : largest 2D frequency that will be sampled, in cycles per pixel (<= 0.5 * margin).
    pad : padding factor (RELION uses 2).
    workers : FFT threads.
    margin : extra factor on k_max_px for frequencies mapped outward (e.g. by a magnification
        matrix).

    The transform is computed axis by axis (x, then y, then z), transforming only the rows that
    hold the map and keeping only the frequencies within the radius after each axis: the same
    numbers as ``rfftn`` of the whole padded cube, at a fraction of the cost.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"reference map must be a cube, got shape {volume.shape}")
    box = volume.shape[0]
    size = pad * box
    radius = int(np.ceil(pad * box * k_max_px * margin)) + 2
    h = box // 2
    g = np.roll(gridding_correct(volume, pad), (-h, -h, -h), axis=(0, 1, 2))  # centre -> index 0
    n_direct = min(radius + 2, size // 2 + 1)
    zy = np.arange(-radius, radius + 1) % size
    fx = scipy.fft.rfft(_pad_centre_out(g, 2, size), axis=2, workers=workers)[..., :n_direct]
    del g
    # each padded copy is transformed in place (overwrite_x) and the kept rows copied out, so
    # that no second padded-size array exists (box 360 to Nyquist: 1.5 GB instead of 3-4 GB)
    fy = scipy.fft.fft(_pad_centre_out(fx, 1, size), axis=1, workers=workers,
                       overwrite_x=True)[:, zy]
    del fx
    fz = scipy.fft.fft(_pad_centre_out(fy, 0, size), axis=0, workers=workers, overwrite_x=True)
    del fy
    data = np.empty((zy.size, zy.size, radius + 2), dtype=np.complex64)
    for i, z in enumerate(zy):  # row by row: no copy of the kept rows beside fz
        data[i, :, :n_direct] = fz[z]
    del fz
    for x in range(n_direct, radius + 2):  # beyond the stored half: F(x) = conj(F(-x))
        data[:, :, x] = np.conj(data[::-1, ::-1, size - x])
    return PaddedReference(np.ascontiguousarray(data), radius, box, pad)


def central_slice_coordinates(rotations: np.ndarray, kx_px: np.ndarray, ky_px: np.ndarray,
                              scale: float) -> np.ndarray:
    """3D sampling coordinates scale * A^T (kx, ky, 0): shape (n, m, 3) as (x, y, z).

    rotations : (n, 3, 3) matrices A; kx_px, ky_px : (m,) or (n, m) in cycles per pixel.
    """
    kx = np.broadcast_to(kx_px, (rotations.shape[0],) + np.shape(kx_px)[-1:])
    ky = np.broadcast_to(ky_px, kx.shape)
    # A^T (kx, ky, 0): component j = A[0, j] * kx + A[1, j] * ky
    coords = rotations[:, None, 0, :] * kx[..., None] + rotations[:, None, 1, :] * ky[..., None]
    return coords * scale


def trilinear_corners(ref: PaddedReference, coords: np.ndarray):
    """The trilinear corners of coordinates (..., 3) = (x, y, z) in padded-grid units.

    Returns ``flip`` (coords' leading shape: the point is read from its Friedel mate, i.e. the
    value is conjugated) and a list of the 8 corners as (flat index into ``ref.data``, weight),
    each of coords' leading shape. Raises ValueError for points beyond the stored radius.
    """
    x, y, z = coords[..., 0], coords[..., 1], coords[..., 2]
    flip = x < 0
    x, y, z = np.where(flip, -x, x), np.where(flip, -y, y), np.where(flip, -z, z)
    r = ref.radius
    if np.any(x > r) or np.any(np.abs(y) > r - 1) or np.any(np.abs(z) > r - 1):
        raise ValueError("sampling beyond the cropped reference; increase k_max_px")
    y, z = y + r, z + r
    x0, y0, z0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp), np.floor(z).astype(np.intp)
    fx, fy, fz = x - x0, y - y0, z - z0
    ny, nx = ref.data.shape[1], ref.data.shape[2]
    corners = []
    for dz, wz in ((0, 1 - fz), (1, fz)):
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                corners.append((((z0 + dz) * ny + (y0 + dy)) * nx + (x0 + dx), wz * wy * wx))
    return flip, corners


def sample_trilinear(ref: PaddedReference, coords: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``ref`` at coordinates (..., 3) = (x, y, z), padded-grid units.

    Reference implementation in numpy (the compiled kernels must agree with it).
    """
    flip, corners = trilinear_corners(ref, coords)
    flat = ref.data.reshape(-1)
    out = np.zeros(flip.shape, dtype=np.complex128)
    for idx, weight in corners:
        out += weight * flat[idx]
    return np.where(flip, np.conj(out), out)
