"""Frequency grids in numpy's rfft2 layout (FFTW half-complex), and the resolution band.

An image ``img[y, x]`` of size (box, box) whose centre is at index box//2 is transformed with
``rfft2(ifftshift(img))``; element [i, j] has frequency kx = j/(box*pixel_size_A),
ky = fftfreq(box)[i]/pixel_size_A, both in 1/Angstrom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft


@dataclass(frozen=True)
class Band:
    """The Fourier pixels of a box used in a fit: |k| in [k_min, k_max] (1/A, nominal pixel size;
    ``k_max_per_A`` is k_max, capped at Nyquist).

    ``flat_index`` indexes the flattened rfft2 grid; ``kx_px``/``ky_px`` are in cycles per pixel.
    Column kx = 0 keeps only ky >= 0 (the rest are Friedel mates), so every band pixel stands for
    itself and its mate: ``friedel_weight`` is 2, except 1 for self-conjugate pixels (kx and ky
    each 0 or Nyquist). Weighted sums over the band equal sums over the full transform.
    """

    box: int
    pixel_size_A: float
    k_max_per_A: float
    flat_index: np.ndarray
    kx_px: np.ndarray
    ky_px: np.ndarray
    friedel_weight: np.ndarray

    @property
    def size(self) -> int:
        return int(self.flat_index.size)


def make_band(box: int, pixel_size_A: float, k_min_per_A: float, k_max_per_A: float) -> Band:
    """Select the rfft2 pixels with k_min <= |k| <= k_max (1/A), capped at Nyquist."""
    if box < 8 or box % 2:
        raise ValueError(f"box size must be an even number >= 8, got {box}")
    ky, kx = np.meshgrid(np.fft.fftfreq(box), np.fft.rfftfreq(box), indexing="ij")  # cycles/pixel
    k = np.hypot(kx, ky) / pixel_size_A
    nyquist = 0.5 / pixel_size_A
    k_max = min(k_max_per_A, nyquist)
    sel = (k >= k_min_per_A) & (k <= k_max)
    # Keep only one of each Friedel pair in column 0 (ky < 0 duplicates ky > 0, except the
    # self-conjugate Nyquist row ky = -0.5).
    sel &= ~((kx == 0) & (ky < 0) & (ky != -0.5))
    flat = np.flatnonzero(sel)
    kxs, kys = kx.ravel()[flat], ky.ravel()[flat]
    self_conjugate = np.isin(kxs, (0.0, 0.5)) & np.isin(np.abs(kys), (0.0, 0.5))
    weight = np.where(self_conjugate, 1.0, 2.0)
    return Band(box, float(pixel_size_A), float(k_max), flat, kxs, kys, weight)


def cropped_indices(n_in: int, n_out: int) -> np.ndarray:
    """Indices into a length-``n_in`` FFT axis of the frequencies a length-``n_out`` axis holds
    (numpy order: 0, 1, ..., n_out/2 - 1, -n_out/2, ..., -1), for an even n_out <= n_in."""
    return np.rint(np.fft.fftfreq(n_out) * n_out).astype(np.int64) % n_in


def _zero_nyquist(ft: np.ndarray) -> np.ndarray:
    """Zero the Nyquist planes of an rfftn-layout array of an even box (a cropped transform has
    there one side of a pair that the full transform holds on both; no band reaches them)."""
    n = ft.shape[0]
    ft[n // 2] = 0
    ft[:, n // 2] = 0
    ft[..., -1] = 0
    return ft


def crop_rfftn(ft: np.ndarray, n_out: int) -> np.ndarray:
    """The frequencies of a box-``n_out`` grid taken from a full rfftn array ``ft`` of shape
    (n, n, n//2 + 1): shape (n_out, n_out, n_out//2 + 1), same values (unnormalised), Nyquist
    planes zeroed. Frequency index j stays frequency index j (j / (n * pixel) per Angstrom)."""
    idx = cropped_indices(ft.shape[0], n_out)
    return _zero_nyquist(ft[np.ix_(idx, idx, np.arange(n_out // 2 + 1))].copy())


def fourier_crop(volume: np.ndarray, n_out: int, workers: int = 1,
                 slab: int = 32) -> np.ndarray:
    """rfftn of a cubic real map (n^3) keeping only the frequencies of a box-``n_out`` grid.

    Same numbers as ``crop_rfftn(scipy.fft.rfftn(volume), n_out)``, computed axis by axis (x and
    y per slab of ``slab`` z-planes, then z on the cropped array), so memory stays at the cropped
    output plus one slab: n * n_out * (n_out//2 + 1) complex values, not n^3. Precision follows
    the input (float32 -> complex64). n_out must be even and <= n.
    """
    n = volume.shape[0]
    if n_out % 2 or n_out > n:
        raise ValueError(f"cropped box must be even and at most {n}, got {n_out}")
    idx = cropped_indices(n, n_out)
    nx = n_out // 2 + 1
    dtype = np.complex64 if volume.dtype == np.float32 else np.complex128
    zy = np.empty((n, n_out, nx), dtype=dtype)
    for z0 in range(0, n, slab):
        fx = scipy.fft.rfft(volume[z0:z0 + slab], axis=2, workers=workers)[..., :nx]
        zy[z0:z0 + slab] = scipy.fft.fft(fx, axis=1, workers=workers)[:, idx]
    out = scipy.fft.fft(zy, axis=0, workers=workers)[idx]
    return _zero_nyquist(out)


#: Fourier shells kept beyond a band's limit when a map is Fourier cropped before further
#: real-space work (the gridding correction and zero padding of the 3D references blur the
#: transform over a few shells: the band stays clear of the crop's edge).
CROP_MARGIN_SHELLS = 8


def even_fast(n: float, limit: int) -> int:
    """Smallest even FFT-friendly size >= n, at most ``limit``."""
    m = int(np.ceil(n))
    while True:
        m = scipy.fft.next_fast_len(m + (m % 2), real=True)
        if m % 2 == 0:
            return min(m, limit)
        m += 1


def band_limited_box(box: int, k_max_px: float, margin_shells: int = CROP_MARGIN_SHELLS) -> int:
    """Smallest even FFT-friendly box (at most ``box``) whose grid holds every frequency up to
    ``k_max_px`` (cycles per pixel of the box-``box`` map) plus ``margin_shells`` shells."""
    return even_fast(2 * (int(np.ceil(box * k_max_px)) + margin_shells), box)


def band_limited_map(volume: np.ndarray, n_out: int, workers: int = 1) -> np.ndarray:
    """A cubic map (n^3, centre at n//2) resampled on an ``n_out`` grid by Fourier cropping
    (float32, centre at n_out//2, voxel n/n_out times larger): its rfftn equals the map's at every
    kept frequency index (index j: j / (n * pixel) per Angstrom on both). Memory: the cropped
    transform, not the map's (see :func:`fourier_crop`)."""
    volume = np.asarray(volume, dtype=np.float32)
    if n_out >= volume.shape[0]:
        return volume
    ft = fourier_crop(volume, n_out, workers)
    return scipy.fft.irfftn(ft, s=(n_out,) * 3, workers=workers).astype(np.float32)
