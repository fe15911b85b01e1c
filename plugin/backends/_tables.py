"""The inputs of the compiled kernels: THE definition of their tables' layout, the band
pixels' grid indices and centring sign, and the per-particle tables of the CPU kernel.

Two float64 tables feed the fused slice + shift + CTF + statistics kernels (C, CUDA):

* the per-particle table, (n, N_PARTICLE_COLUMNS), one row per particle, columns
  :class:`ParticleColumn`;
* the per-pixel table, (rows, m), one column per band pixel, rows :class:`PixelRow` (the first
  ``N_BASE_PIXEL_ROWS`` always; the trigonometric rows only ``with_trig``).

Every kernel reads these tables through the names defined here: the C kernel is given the
column and row of each quantity with every call (:mod:`csrefine.backends.cpu_backend`) and the
CUDA source gets ``#define`` lines generated from them by :func:`cuda_defines`, so reordering a
table here reorders every kernel's reads.

The CPU kernel also takes, the projection frequencies being a linear map of the grid
(:func:`linear_frequency_map`), the origin shift factorised along grid columns and rows
(:func:`shift_tables`) and the defocus phase as a quadratic in the grid indices
(:func:`defocus_tables`); :func:`kernel_inputs` gathers one call's arrays.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ..accumulate import N_STATS
from ..ctf import astigmatism
from ..geometry import euler_zyz_to_matrix


class ParticleColumn(IntEnum):
    """Columns of the per-particle table (float64).

    MEAN_DEFOCUS_A : (dfU + dfV) / 2, Angstrom, positive = underfocus.
    HALF_ASTIGMATISM_A : (dfU - dfV) / 2, Angstrom.
    COS_2PHI, SIN_2PHI : cos and sin of twice the astigmatism angle.
    PHASE_SHIFT_RAD : phase-plate shift, radians (subtracted from gamma).
    NEG_QUARTER_B_A2 : -B / 4, Angstrom^2 (envelope exp(-B |k|^2 / 4)).
    SCALE : CTF scale factor (dimensionless).
    ORIGIN_X_A, ORIGIN_Y_A : particle origin, Angstrom (shift phase exp(+2 pi i k.origin)).
    R00 ... R12 : first two rows of the particle's rotation matrix A (ZYZ Euler angles);
        the slice samples the map at A^T (kx, ky, 0).
    """

    MEAN_DEFOCUS_A = 0
    HALF_ASTIGMATISM_A = 1
    COS_2PHI = 2
    SIN_2PHI = 3
    PHASE_SHIFT_RAD = 4
    NEG_QUARTER_B_A2 = 5
    SCALE = 6
    ORIGIN_X_A = 7
    ORIGIN_Y_A = 8
    R00 = 9
    R01 = 10
    R02 = 11
    R10 = 12
    R11 = 13
    R12 = 14


N_PARTICLE_COLUMNS = len(ParticleColumn)


class PixelRow(IntEnum):
    """Rows of the per-pixel table (float64); see :class:`csrefine.forward.PixelTerms`.

    KX_PX, KY_PX : projection frequencies, cycles per pixel (after the magnification matrix).
    KX_PER_A, KY_PER_A : the same in 1/Angstrom (KX_PX / pixel size), for the origin shift.
    K2 : |k'|^2, 1/Angstrom^2.
    COS_2THETA, SIN_2THETA : cos and sin of 2 atan2(ky', kx').
    GAMMA_STATIC : CTF phase common to all particles (Cs, even aberrations, -K3), radians.
    ODD_PHASE : odd aberration phase (odd Zernike and beam tilt), radians.
    COS_ODD_PHASE ... SIN_GAMMA_STATIC : cos and sin of the two phases (``with_trig`` only).
    """

    KX_PX = 0
    KY_PX = 1
    KX_PER_A = 2
    KY_PER_A = 3
    K2 = 4
    COS_2THETA = 5
    SIN_2THETA = 6
    GAMMA_STATIC = 7
    ODD_PHASE = 8
    COS_ODD_PHASE = 9
    SIN_ODD_PHASE = 10
    COS_GAMMA_STATIC = 11
    SIN_GAMMA_STATIC = 12


#: Rows computed with trigonometry, present only in ``pixel_table(..., with_trig=True)``.
TRIG_PIXEL_ROWS = (PixelRow.COS_ODD_PHASE, PixelRow.SIN_ODD_PHASE, PixelRow.COS_GAMMA_STATIC,
                   PixelRow.SIN_GAMMA_STATIC)
N_PIXEL_ROWS = len(PixelRow)
N_BASE_PIXEL_ROWS = N_PIXEL_ROWS - len(TRIG_PIXEL_ROWS)  # the trigonometric rows come last


def particle_table(particles) -> np.ndarray:
    """Per-particle kernel inputs.

    Parameters
    ----------
    particles : :class:`csrefine.model.Particles` of n particles.

    Returns
    -------
    np.ndarray
        (n, N_PARTICLE_COLUMNS) float64, C-contiguous, columns :class:`ParticleColumn`; the
        values are computed exactly as the numpy reference backend computes them.
    """
    n = len(particles)
    table = np.empty((n, N_PARTICLE_COLUMNS), dtype=np.float64)
    ast = astigmatism(particles.defocus_u_A, particles.defocus_v_A, particles.defocus_angle_deg)
    rot = euler_zyz_to_matrix(particles.rot_deg, particles.tilt_deg, particles.psi_deg)
    c = ParticleColumn
    columns = {
        c.MEAN_DEFOCUS_A: ast.mean_A, c.HALF_ASTIGMATISM_A: ast.half_difference_A,
        c.COS_2PHI: ast.cos_2phi, c.SIN_2PHI: ast.sin_2phi,
        c.PHASE_SHIFT_RAD: np.deg2rad(particles.phase_shift_deg),
        c.NEG_QUARTER_B_A2: -0.25 * particles.bfactor_A2, c.SCALE: particles.ctf_scale,
        c.ORIGIN_X_A: particles.origin_x_A, c.ORIGIN_Y_A: particles.origin_y_A,
        c.R00: rot[:, 0, 0], c.R01: rot[:, 0, 1], c.R02: rot[:, 0, 2],
        c.R10: rot[:, 1, 0], c.R11: rot[:, 1, 1], c.R12: rot[:, 1, 2],
    }
    for column in ParticleColumn:
        table[:, column] = columns[column]
    return table


def pixel_table(terms, pixel_size_A: float, with_trig: bool = True) -> np.ndarray:
    """Per-pixel kernel inputs.

    Parameters
    ----------
    terms : :class:`csrefine.forward.PixelTerms` on a band of m pixels.
    pixel_size_A : pixel size in Angstrom (converts cycles per pixel to 1/Angstrom).
    with_trig : also the rows :data:`TRIG_PIXEL_ROWS` (cos/sin of the odd and static phases).

    Returns
    -------
    np.ndarray
        (N_PIXEL_ROWS, m) float64 with ``with_trig``, else (N_BASE_PIXEL_ROWS, m); rows
        :class:`PixelRow`, C-contiguous.
    """
    r = PixelRow
    rows = {
        r.KX_PX: terms.kx_px, r.KY_PX: terms.ky_px, r.KX_PER_A: terms.kx_px / pixel_size_A,
        r.KY_PER_A: terms.ky_px / pixel_size_A, r.K2: terms.k2, r.COS_2THETA: terms.cos2,
        r.SIN_2THETA: terms.sin2, r.GAMMA_STATIC: terms.gamma_static, r.ODD_PHASE: terms.odd_phase,
    }
    if with_trig:
        rows.update({r.COS_ODD_PHASE: np.cos(terms.odd_phase),
                     r.SIN_ODD_PHASE: np.sin(terms.odd_phase),
                     r.COS_GAMMA_STATIC: np.cos(terms.gamma_static),
                     r.SIN_GAMMA_STATIC: np.sin(terms.gamma_static)})
    return np.ascontiguousarray(np.stack([rows[row] for row in sorted(rows)]).astype(np.float64))


def cuda_defines() -> str:
    """``#define`` lines naming the tables' indices, for the CUDA kernel source:
    ``CSREFINE_PT_<column>`` (index into a particle's row), ``CSREFINE_PX_<row>`` (row of the
    pixel table), ``CSREFINE_N_PARTICLE_COLUMNS`` and ``CSREFINE_N_STATS``."""
    lines = [f"#define CSREFINE_PT_{c.name} {int(c)}" for c in ParticleColumn]
    lines += [f"#define CSREFINE_PX_{r.name} {int(r)}" for r in PixelRow]
    lines += [f"#define CSREFINE_N_PARTICLE_COLUMNS {N_PARTICLE_COLUMNS}",
              f"#define CSREFINE_N_STATS {N_STATS}"]
    return "\n".join(lines) + "\n"


def grid_indices(band) -> tuple[np.ndarray, np.ndarray]:
    """Column j (0..box/2) and row (0..box-1, ky index + box/2) of each band pixel, (m,) int64."""
    col = np.rint(np.asarray(band.kx_px) * band.box).astype(np.int64)
    row = np.rint(np.asarray(band.ky_px) * band.box).astype(np.int64) + band.box // 2
    return col, row


def centring_sign(band) -> np.ndarray:
    """(-1)^(kx + ky) at the band pixels (float32, (m,)): the rfft2 of an image centred at
    box//2 times this equals the rfft2 of the image with its centre moved to index 0
    (``ifftshift``), exactly, for the even boxes a band has. The backends transform the images
    as they are and multiply by this, instead of copying each image shifted."""
    col, row = grid_indices(band)
    return np.where((col + row - band.box // 2) % 2 == 0, 1.0, -1.0).astype(np.float32)


def linear_frequency_map(terms, band) -> np.ndarray:
    """The 2x2 matrix L with (terms.kx_px, terms.ky_px) = L (band.kx_px, band.ky_px) (the
    magnification matrix :func:`csrefine.forward.pixel_terms` applies); ValueError if the
    projection frequencies are no linear map of the grid's."""
    basis = np.stack([band.kx_px, band.ky_px], axis=1)
    target = np.stack([terms.kx_px, terms.ky_px], axis=1)
    sol, *_ = np.linalg.lstsq(basis, target, rcond=None)
    if np.max(np.abs(basis @ sol - target), initial=0.0) > 1e-12:
        raise ValueError("the projection frequencies are no linear map of the band's grid: the "
                         "CPU kernel cannot factorise the shift and defocus phases")
    return sol.T


def shift_tables(particles, lin: np.ndarray, band, pixel_size_A: float):
    """Per-particle factors of exp(2 pi i k.origin) along grid columns and rows: (n, box/2 + 1)
    and (n, box) complex128, with k = L k_grid / pixel_size (L: :func:`linear_frequency_map`)."""
    box = band.box
    ox, oy = particles.origin_x_A, particles.origin_y_A
    # k.o = (kx_g (L00 ox + L10 oy) + ky_g (L01 ox + L11 oy)) / pixel
    sx = (lin[0, 0] * ox + lin[1, 0] * oy) / pixel_size_A
    sy = (lin[0, 1] * ox + lin[1, 1] * oy) / pixel_size_A
    kcol = np.arange(box // 2 + 1) / box
    krow = (np.arange(box) - box // 2) / box
    shift_x = np.exp(2j * np.pi * sx[:, None] * kcol[None, :])
    shift_y = np.exp(2j * np.pi * sy[:, None] * krow[None, :])
    return shift_x, shift_y


def defocus_tables(particles, lin: np.ndarray, band, pixel_size_A: float,
                   defocus_factor: float) -> np.ndarray:
    """Per-particle coefficients of the defocus phase as a quadratic in the grid indices,
    (n, 7) float64.

    With k' = (j u + y v) (1/A; j the column, y the signed row, u, v the columns of the linear
    frequency map over box * pixel), the defocus phase defocus_factor * defocus(theta) * |k'|^2
    is k'^T S k' with S = defocus_factor * [[mean + h cos2phi, h sin2phi],
    [h sin2phi, mean - h cos2phi]] (h: half the astigmatism). Columns: uSu, uSv, vSv,
    cos(2 uSu), sin(2 uSu), cos(phase shift), sin(phase shift)."""
    ast = astigmatism(particles.defocus_u_A, particles.defocus_v_A, particles.defocus_angle_deg)
    mean, half = ast.mean_A, ast.half_difference_A
    sxx = defocus_factor * (mean + half * ast.cos_2phi)
    syy = defocus_factor * (mean - half * ast.cos_2phi)
    sxy = defocus_factor * half * ast.sin_2phi
    u = lin[:, 0] / (band.box * pixel_size_A)
    v = lin[:, 1] / (band.box * pixel_size_A)
    suu = u[0] * u[0] * sxx + 2.0 * u[0] * u[1] * sxy + u[1] * u[1] * syy
    suv = u[0] * v[0] * sxx + (u[0] * v[1] + u[1] * v[0]) * sxy + u[1] * v[1] * syy
    svv = v[0] * v[0] * sxx + 2.0 * v[0] * v[1] * sxy + v[1] * v[1] * syy
    ph = np.deg2rad(particles.phase_shift_deg)
    return np.ascontiguousarray(np.stack([suu, suv, svv, np.cos(2.0 * suu), np.sin(2.0 * suu),
                                          np.cos(ph), np.sin(ph)], axis=1))


@dataclass(frozen=True)
class PixelInputs:
    """The per-pixel inputs of the CPU kernel for one (terms, band, pixel size): pix (rows, m)
    float64 (:func:`pixel_table` with the trigonometric rows), lin the linear frequency map,
    col and row (m,) int64 grid indices, cont (m,) int8 row continuation."""

    pix: np.ndarray
    lin: np.ndarray
    col: np.ndarray
    row: np.ndarray
    cont: np.ndarray


#: The last :class:`PixelInputs` computed: ((weak refs to terms and band, pixel size), inputs).
_LAST_PIXEL_INPUTS: list = [None, None]


def pixel_inputs(terms, band, pixel_size_A: float) -> PixelInputs:
    """The :class:`PixelInputs` of (terms, band), computed once while the same objects are
    passed batch after batch (one optics group), then recomputed for the next."""
    key, cached = _LAST_PIXEL_INPUTS
    if key is not None and key[0]() is terms and key[1]() is band and key[2] == pixel_size_A:
        return cached
    col, row = grid_indices(band)
    cont = np.zeros(col.size, dtype=np.int8)  # 1: the pixel follows the previous one on its row
    cont[1:] = (row[1:] == row[:-1]) & (col[1:] == col[:-1] + 1)
    value = PixelInputs(pixel_table(terms, pixel_size_A), linear_frequency_map(terms, band), col,
                        row, cont)
    _LAST_PIXEL_INPUTS[:] = [(weakref.ref(terms), weakref.ref(band), pixel_size_A), value]
    return value


@dataclass(frozen=True)
class KernelInputs:
    """One CPU kernel call's arrays (C-contiguous) and scalars; n particles, m band pixels.

    cells (n,) int64; observed (n, m) complex64 or complex128 band transforms; ptab (n, columns)
    float64 (:func:`particle_table`); pixels: :class:`PixelInputs`; ref: the padded reference's
    complex64 data, radius, scale; shift_x (n, box/2 + 1), shift_y (n, box) complex128 and qtab
    (n, 7) float64: the factorised shift and defocus phase; half_box = box // 2."""

    cells: np.ndarray
    observed: np.ndarray
    ptab: np.ndarray
    pixels: PixelInputs
    ref: np.ndarray
    radius: int
    ref_scale: float
    shift_x: np.ndarray
    shift_y: np.ndarray
    qtab: np.ndarray
    half_box: int


def kernel_inputs(cells, observed, particles, reference, terms, band,
                  pixel_size_A: float) -> KernelInputs:
    """The :class:`KernelInputs` of band transforms ``observed`` (n, m) of ``particles``,
    predicted from ``reference`` (:class:`csrefine.projection.PaddedReference`)."""
    pixels = pixel_inputs(terms, band, pixel_size_A)
    shift_x, shift_y = shift_tables(particles, pixels.lin, band, pixel_size_A)
    qtab = defocus_tables(particles, pixels.lin, band, pixel_size_A, float(terms.defocus_factor))
    return KernelInputs(np.ascontiguousarray(cells, dtype=np.int64), np.ascontiguousarray(observed),
                        particle_table(particles), pixels, reference.data, int(reference.radius),
                        float(reference.scale), shift_x, shift_y, qtab, band.box // 2)
