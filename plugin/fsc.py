"""Fourier shell correlation of two half maps and the resolution band it allows."""

from __future__ import annotations

import numpy as np
import scipy.fft

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


def fsc_curve(half1: np.ndarray, half2: np.ndarray, mask: np.ndarray | None = None,
              workers: int = 1) -> np.ndarray:
    """FSC per shell (index = radius in Fourier pixels, 0..box//2), masked if a mask is given."""
    if mask is not None:
        half1, half2 = half1 * mask, half2 * mask
    f1 = scipy.fft.rfftn(half1, workers=workers)
    f2 = scipy.fft.rfftn(half2, workers=workers)
    box = half1.shape[0]
    kz = np.fft.fftfreq(box)[:, None, None]
    ky = np.fft.fftfreq(box)[None, :, None]
    kx = np.fft.rfftfreq(box)[None, None, :]
    shell = np.rint(np.sqrt(kz**2 + ky**2 + kx**2) * box).astype(np.int64).ravel()
    weight = np.where(np.broadcast_to(kx, f1.shape).ravel() == 0, 1.0, 2.0)
    keep = shell <= box // 2
    shell, weight = shell[keep], weight[keep]
    a, b = f1.ravel()[keep], f2.ravel()[keep]
    n = box // 2 + 1
    cross = np.bincount(shell, weight * (a * b.conj()).real, minlength=n)
    p1 = np.bincount(shell, weight * np.abs(a) ** 2, minlength=n)
    p2 = np.bincount(shell, weight * np.abs(b) ** 2, minlength=n)
    return cross / np.sqrt(np.maximum(p1 * p2, 1e-300))


def resolution_at_threshold(fsc: np.ndarray, box: int, pixel_size_A: float,
                            threshold: float = FSC_THRESHOLD, first_shell: int = 2) -> float:
    """Resolution (A) of the last shell before the FSC first drops below ``threshold``
    (searching from ``first_shell``); Nyquist if it never does."""
    below = np.flatnonzero(fsc[first_shell:] < threshold)
    shell = (below[0] + first_shell - 1) if below.size else len(fsc) - 1
    shell = max(shell, 1)
    return box * pixel_size_A / shell
