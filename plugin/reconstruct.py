"""Half maps reconstructed from particle images by Fourier insertion, as a refinement makes them.

Each particle's image transform X (``rfft2(ifftshift(image))``, the band's pixels k) is
multiplied by the particle's CTF (its optics group's as given: the *nominal* one, as RELION
reconstructs), its origin shift and odd phase are undone, and the result is inserted at the
particle's central slice A^T M k on a padded 3D grid with trilinear weights: the adjoint of
:func:`csrefine.projection.sample_trilinear`, through the same
:func:`~csrefine.projection.central_slice_coordinates` and
:func:`~csrefine.projection.trilinear_corners`. CTF^2 is inserted alike, and the map is

    V = IFT[ sum_i CTF_i conj(s_i) X_i  /  (sum_i CTF_i^2 + regulariser) ]

(s_i = exp(+2 pi i k'.origin_i + i odd(k')), the prediction's phase factor; the sums are the
trilinear insertions), cropped to the box and divided by sinc^2 (the transform of the
trilinear kernel, :func:`~csrefine.projection.gridding_correct`). One map per half set
(rlnRandomSubset), so each half map holds the noise of its own particles, as gold-standard half
maps do. From noise-free projections the map's FSC with the original is >= 0.99 up to two
shells short of Nyquist (tests/test_reconstruct.py); the amplitude is within a few percent of
the original's there, except at the lowest shells (the DC term up to ~15% low: near the origin the
CTF^2 weights vary across a voxel's trilinear footprint), which no Cs fit uses.
"""

from __future__ import annotations

import numpy as np

from .forward import particle_envelope, particle_gamma, pixel_terms
from .fourier import Band, make_band
from .geometry import euler_zyz_to_matrix
from .model import OpticsGroup, Particles
from .projection import (
    PaddedReference,
    central_slice_coordinates,
    gridding_correct,
    trilinear_corners,
)

#: Added to the summed CTF^2 before dividing, in units of one particle's full-contrast sample at
#: a voxel (at Nyquist each voxel of a half map of 1,500 particles sums about one such sample).
REGULARISER = 0.01


def insertion_grid(box: int, pad: int = 2) -> PaddedReference:
    """The padded grid the samples are inserted into, with the layout of a
    :class:`~csrefine.projection.PaddedReference` (radius pad * box / 2 + 1 in padded-grid units,
    data of shape (2R+1, 2R+1, R+2)); its data is a read-only placeholder, only its shape is used."""
    radius = pad * box // 2 + 1
    shape = (2 * radius + 1, 2 * radius + 1, radius + 2)
    return PaddedReference(np.broadcast_to(np.complex64(0), shape), radius, box, pad)


def insertion_band(group: OpticsGroup) -> Band:
    """The image frequencies inserted: |k| <= (box - 1) / (2 box) cycles per pixel, half a
    Fourier pixel short of Nyquist, so that no trilinear corner (for a magnification matrix
    close to the identity) wraps around the padded grid."""
    box, pixel_size_A = group.box_size, group.pixel_size_A
    return make_band(box, pixel_size_A, 0.0, (box - 1) / (2.0 * box * pixel_size_A))


def insert_particles(numerator: np.ndarray, weight: np.ndarray, grid: PaddedReference,
                     group: OpticsGroup, particles: Particles, images: np.ndarray) -> None:
    """Add ``particles``' CTF-weighted transforms to ``numerator`` (complex128) and their CTF^2 to
    ``weight`` (float64), both of ``grid.data``'s shape, over :func:`insertion_band`.

    images : (n, box, box) real images, centred at box//2, of ``group``'s optics (whose Cs, the
    nominal one, gives the CTF). The numerator is the adjoint of
    :func:`csrefine.forward.predict_band` applied to the images' band values: for any grid data
    G, Re vdot(numerator, G) = Re sum conj(X) * prediction(G) over the band.
    """
    band = insertion_band(group)
    p_A = group.pixel_size_A
    terms = pixel_terms(group, band)
    transforms = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1))).reshape(len(images), -1)
    x = transforms[:, band.flat_index]
    ctf = -np.sin(particle_gamma(terms, particles)) * particle_envelope(terms, particles)
    kx, ky = terms.kx_px / p_A, terms.ky_px / p_A
    shift = 2.0 * np.pi * (kx * particles.origin_x_A[:, None] + ky * particles.origin_y_A[:, None])
    value = ctf * x * np.exp(-1j * (shift + terms.odd_phase))  # the prediction's phases undone
    rot = euler_zyz_to_matrix(particles.rot_deg, particles.tilt_deg, particles.psi_deg)
    coords = central_slice_coordinates(rot, terms.kx_px, terms.ky_px, grid.scale)
    flip, corners = trilinear_corners(grid, coords)
    value = np.where(flip, np.conj(value), value).ravel()  # a Friedel mate's value is conjugated
    index = np.concatenate([idx.ravel() for idx, _ in corners])
    w = np.stack([wt.ravel() for _, wt in corners])  # (8, samples)
    size = numerator.size
    flat_num, flat_w = numerator.reshape(-1), weight.reshape(-1)
    flat_num.real += np.bincount(index, (w * value.real).ravel(), minlength=size)
    flat_num.imag += np.bincount(index, (w * value.imag).ravel(), minlength=size)
    flat_w += np.bincount(index, (w * (ctf * ctf).ravel()).ravel(), minlength=size)


def _friedel_complete(a: np.ndarray, conjugate: bool) -> np.ndarray:
    """The x = 0 plane of a padded-grid array gets its Friedel mates' insertions: a sample at
    x in [0, 1) also stands for its mate at (-x, -y, -z), whose corner (0, -y, -z) is not in
    the samples' half."""
    plane = a[:, :, 0]
    mirror = plane[::-1, ::-1]
    a[:, :, 0] = plane + (np.conj(mirror) if conjugate else mirror)
    return a


def map_from_insertions(numerator: np.ndarray, weight: np.ndarray, grid: PaddedReference,
                        regulariser: float = REGULARISER) -> np.ndarray:
    """The real-space map (box, box, box) float32, centre at box//2, [z, y, x], from the
    inserted sums (see the module docstring): division, inverse transform of the padded grid,
    crop, gridding correction."""
    box, pad, r = grid.box, grid.pad, grid.radius
    n = pad * box
    ratio = (_friedel_complete(numerator.copy(), True)
             / (_friedel_complete(weight.copy(), False) + regulariser))
    axis = (np.arange(2 * r + 1) - r) % n  # padded-grid coordinate -> FFT index (+-n/2 meet)
    by_z = np.zeros((n, 2 * r + 1, n // 2 + 1), dtype=np.complex128)
    np.add.at(by_z, axis, ratio[:, :, : n // 2 + 1])
    folded = np.zeros((n, n, n // 2 + 1), dtype=np.complex128)
    np.add.at(folded, (slice(None), axis), by_z)
    padded = np.fft.irfftn(folded, s=(n, n, n), axes=(0, 1, 2))
    crop = (np.arange(box) - box // 2) % n  # the map's centre box//2 sits at index 0
    return gridding_correct(padded[np.ix_(crop, crop, crop)], pad)


def reconstruct_half_maps(groups: dict[int, OpticsGroup], particles: Particles,
                          images: np.ndarray, pad: int = 2, regulariser: float = REGULARISER,
                          batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The two half maps, each from the particles of its half set (``particles.half_set`` 1, 2).

    groups : optics groups by number (all of one box size and pixel size, the maps'); images :
    (n, box, box) float, in ``particles``' order. Returns (half 1, half 2), float32 (box, box,
    box), [z, y, x], centre at box//2, scaled so that their projections (sums along z, per
    pixel) are the images' signal.
    """
    sizes = {(g.box_size, g.pixel_size_A) for g in groups.values()}
    if len(sizes) != 1:
        raise ValueError(f"optics groups of one box and pixel size needed, got {sorted(sizes)}")
    box = sizes.pop()[0]
    grid = insertion_grid(box, pad)
    halves = []
    for half in (1, 2):
        numerator = np.zeros(grid.data.shape, dtype=np.complex128)
        weight = np.zeros(grid.data.shape, dtype=np.float64)
        for gid, group in groups.items():
            members = np.flatnonzero((particles.half_set == half) & (particles.optics_group == gid))
            for lo in range(0, members.size, batch):
                idx = members[lo:lo + batch]
                insert_particles(numerator, weight, grid, group, particles.subset(idx),
                                 images[idx])
        halves.append(map_from_insertions(numerator, weight, grid, regulariser))
    return halves[0], halves[1]
