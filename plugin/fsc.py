"""Fourier shell correlation of two half maps and the resolution band it allows."""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from .model import nyquist_A

#: The half-map FSC threshold that defines the data's resolution (the "gold standard", 0.143).
FSC_THRESHOLD = 0.143


def soft_spherical_mask(box: int, radius_px: float, edge_px: float = 6.0) -> np.ndarray:
    """Spherical mask (1 inside radius, raised-cosine edge of edge_px), centre box//2, float32."""
    c = np.arange(box) - box // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    mask = np.clip((radius_px + edge_px - r) / edge_px, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * mask)).astype(np.float32)


def default_mask(box: int) -> np.ndarray:
    """The mask used when the user gives none: a soft sphere of radius 0.4 * box - 6 pixels
    with a 6-pixel raised-cosine edge, i.e. 80% of the box across including the edge, which
    leaves room for the particle and keeps the box corners' noise out of the FSC."""
    return soft_spherical_mask(box, 0.4 * box - 6)


def shell_index(box: int) -> np.ndarray:
    """Fourier shell (rounded radius in pixels) of every rfftn element of a box^3 map: (box,
    box, box//2 + 1) int32, from the integer squared radius through a lookup table."""
    k = np.fft.fftfreq(box, 1.0 / box).astype(np.int32)
    kx = np.arange(box // 2 + 1, dtype=np.int32)
    r2 = (k[:, None, None] ** 2 + k[None, :, None] ** 2) + kx[None, None, :] ** 2
    table = np.rint(np.sqrt(np.arange(int(r2.max()) + 1))).astype(np.int32)
    return table[r2]


def fsc_curve(half1: np.ndarray, half2: np.ndarray, mask: np.ndarray | None = None,
              workers: int = 1) -> np.ndarray:
    """FSC per shell (index = radius in Fourier pixels, 0..box//2), masked if a mask is given.

    Sums over the whole Fourier sphere: each rfftn element counts twice (itself and its Friedel
    mate), except those of the kx = 0 plane, which hold both mates themselves. Products are
    formed in the transforms' precision and summed in float64."""
    if mask is not None:
        half1, half2 = half1 * mask, half2 * mask
    f1 = scipy.fft.rfftn(half1, workers=workers)
    f2 = scipy.fft.rfftn(half2, workers=workers)
    box = half1.shape[0]
    n = box // 2 + 1
    shell = shell_index(box)
    a_re, a_im, b_re, b_im = f1.real, f1.imag, f2.real, f2.imag
    sums = []
    for product in (a_re * b_re + a_im * b_im, a_re * a_re + a_im * a_im,
                    b_re * b_re + b_im * b_im):
        whole = np.bincount(shell.ravel(), product.ravel(), minlength=n)
        plane = np.bincount(shell[..., 0].ravel(), product[..., 0].ravel(), minlength=n)
        sums.append((2.0 * whole[:n] - plane[:n]))
    cross, p1, p2 = sums
    return cross / np.sqrt(np.maximum(p1 * p2, 1e-300))


def resolution_at_threshold(fsc: np.ndarray, box: int, pixel_size_A: float,
                            threshold: float = FSC_THRESHOLD, first_shell: int = 2) -> float:
    """Resolution (A) of the last shell before the FSC first drops below ``threshold``
    (searching from ``first_shell``); Nyquist if it never does."""
    below = np.flatnonzero(fsc[first_shell:] < threshold)
    shell = (below[0] + first_shell - 1) if below.size else len(fsc) - 1
    shell = max(shell, 1)
    return box * pixel_size_A / shell


def reaches_nyquist(resolution_A: float, pixel_size_A: float | None) -> bool:
    """Whether an FSC resolution (Å) is the Nyquist resolution of ``pixel_size_A`` (Å; None:
    unknown, False): the curve never dropped below the threshold, and the resolution is a bound."""
    return bool(pixel_size_A) and math.isclose(resolution_A, nyquist_A(pixel_size_A), rel_tol=1e-6)


def reach_text(resolution_A: float, pixel_size_A: float | None) -> str:
    """Where the half-map FSC reaches :data:`FSC_THRESHOLD`, for progress lines: "reaches 0.143
    at 2.62 Å", or "stays above 0.143 up to Nyquist (2.40 Å)"."""
    if reaches_nyquist(resolution_A, pixel_size_A):
        return f"stays above {FSC_THRESHOLD} up to Nyquist ({resolution_A:.2f} Å)"
    return f"reaches {FSC_THRESHOLD} at {resolution_A:.2f} Å"
