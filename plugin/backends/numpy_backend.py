"""Reference backend: plain numpy, vectorised over a batch (slow; the yardstick for the others)."""

from __future__ import annotations

import numpy as np
import scipy.fft

from ..accumulate import accumulate_numpy
from ..forward import particle_envelope, particle_gamma, shifted_projections
from ._tables import centring_sign

name = "numpy"


def band_transforms(images: np.ndarray, band, threads: int = 1) -> np.ndarray:
    """rfft2 of centred images (n, box, box) at the band pixels, as if each image's centre
    (box//2) were moved to index 0 (:func:`csrefine.backends._tables.centring_sign`): (n, m)
    complex."""
    ft = scipy.fft.rfft2(images, workers=threads)
    return ft.reshape(images.shape[0], -1)[:, band.flat_index] * centring_sign(band)


def accumulate_batch(stats, cells, images, particles, reference, terms, band, pixel_size_A,
                     threads: int = 1) -> None:
    """:meth:`csrefine.backends.Backend.accumulate_batch`, the reference: add one batch, all of
    one half set and predicted from ``reference``, to ``stats``."""
    observed = band_transforms(images, band, threads)
    proj = shifted_projections(terms, particles, reference, pixel_size_A)
    accumulate_numpy(stats, cells, observed, proj, particle_gamma(terms, particles),
                     particle_envelope(terms, particles))


def accumulate_halves(stats, cells, images, particles, references, terms, band, pixel_size_A,
                      threads: int = 1) -> None:
    """:meth:`csrefine.backends.Backend.accumulate_halves`: :func:`accumulate_batch` on the
    particles of half set h (h = 1, 2) with ``references[h]``, half set 1 first."""
    for half in (1, 2):
        sel = np.flatnonzero(particles.half_set == half)
        if sel.size:
            accumulate_batch(stats, cells[sel], images[sel], particles.subset(sel),
                             references[half], terms, band, pixel_size_A, threads)


def host_buffer(shape: tuple) -> np.ndarray:
    """``numpy.empty(shape, float32)``: no special memory for the images on the CPU."""
    return np.empty(shape, dtype=np.float32)


def default_batch_size(box: int) -> int:
    """256 particles per batch, whatever the box."""
    return 256


def reader_threads(threads: int) -> int:
    """One thread reads images ahead (the computation uses the ``--j`` threads)."""
    return 1


def warm_up() -> None:
    """Nothing to compile."""
