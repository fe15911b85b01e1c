"""Frequency grids in numpy's rfft2 layout (FFTW half-complex), and the resolution band.

An image ``img[y, x]`` of size (box, box) whose centre is at index box//2 is transformed with
``rfft2(ifftshift(img))``; element [i, j] has frequency kx = j/(box*pixel_size_A),
ky = fftfreq(box)[i]/pixel_size_A, both in 1/Angstrom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rfft_frequencies_px(box: int) -> tuple[np.ndarray, np.ndarray]:
    """(kx, ky) in cycles per pixel on the rfft2 grid, each of shape (box, box//2 + 1)."""
    ky = np.fft.fftfreq(box)[:, None]
    kx = np.fft.rfftfreq(box)[None, :]
    return np.broadcast_to(kx, (box, box // 2 + 1)).copy(), np.broadcast_to(ky, (box, box // 2 + 1)).copy()


@dataclass(frozen=True)
class Band:
    """The Fourier pixels of a box used in a fit: |k| in [k_min, k_max] (1/A, nominal pixel size).

    ``flat_index`` indexes the flattened rfft2 grid; ``kx_px``/``ky_px`` are in cycles per pixel.
    Column kx = 0 keeps only ky >= 0 (the rest are Friedel mates), so every band pixel stands for
    itself and its mate: ``friedel_weight`` is 2, except 1 for self-conjugate pixels (kx and ky
    each 0 or Nyquist). Weighted sums over the band equal sums over the full transform.
    """

    box: int
    pixel_size_A: float
    k_min_per_A: float
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
    kx, ky = rfft_frequencies_px(box)
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
    return Band(box, float(pixel_size_A), float(k_min_per_A), float(k_max), flat, kxs, kys, weight)
