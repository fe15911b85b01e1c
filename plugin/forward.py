"""RELION's forward model for one optics group: prediction = CTF * shift * odd-phase * slice.

For particle i and band pixel p (rfft2 layout, nominal frequency k = (kx, ky)):

    k'      = M k                  (M: the group's 2x2 magnification matrix)
    gamma   = gamma(k', defocus_i, Cs, ...) (csrefine.ctf) + even_zernike(k')
    CTF     = -sin(gamma) * exp(-B_i |k'|^2 / 4) * scale_i
    P_i(k)  = slice of the particle's own half map at A_i^T k'  (trilinear, padded)
              * exp(+2 pi i k'.origin_i)   (particle centre = box centre - origin)
              * exp(i * odd(k'))           (rlnOddZernike with beam tilt inserted)
    X_i(k) ~ CTF_i(k) * P_i(k)

The accumulation in :mod:`csrefine.accumulate` needs gamma and w*P (w the envelope) separately; this
module supplies both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ctf import (
    amplitude_contrast_phase,
    astigmatism,
    cs_phase_factor,
    defocus_phase_factor,
    electron_wavelength_A,
)
from .fourier import Band
from .geometry import euler_zyz_to_matrix
from .model import OpticsGroup, Particles
from .projection import PaddedReference, central_slice_coordinates, sample_trilinear
from .zernike import even_zernike_phase, insert_beam_tilt, odd_zernike_phase


@dataclass(frozen=True)
class PixelTerms:
    """Per-pixel quantities of one optics group on one band, each of shape (m,).

    kx_px, ky_px : frequencies after the magnification matrix, cycles per pixel (projection).
    k2 : |k'|^2 in 1/A^2; cos2, sin2 : cos/sin of 2*atan2(ky', kx').
    gamma_static : phase common to all particles (Cs term, even Zernike, -K3), radians.
    odd_phase : odd aberration phase (odd Zernike + beam tilt), radians.
    defocus_factor : -pi*lambda (rad / (A * A^-2)); cs_factor : (pi/2)*lambda^3*1e7 (rad/(mm A^-4)).
    """

    kx_px: np.ndarray
    ky_px: np.ndarray
    k2: np.ndarray
    cos2: np.ndarray
    sin2: np.ndarray
    gamma_static: np.ndarray
    odd_phase: np.ndarray
    defocus_factor: float
    cs_factor: float


def magnified(kx, ky, mag_matrix):
    """k' = M k for a 2x2 matrix M (frequency arrays of any matching shape)."""
    m = np.asarray(mag_matrix, dtype=np.float64)
    return m[0, 0] * kx + m[0, 1] * ky, m[1, 0] * kx + m[1, 1] * ky


def pixel_terms(group: OpticsGroup, band: Band, projection_uses_mag: bool = True) -> PixelTerms:
    """Pre-compute the per-pixel terms of ``group`` on ``band``.

    ``projection_uses_mag=False`` samples the reference at the nominal frequency k instead of M k:
    that is what ``relion_project`` 3.1 does (it applies M to the CTF only), whereas RELION's
    refinement model (ObservationModel) applies M to both; the default follows the refinement.
    """
    cs = group.cs_mm
    lam = electron_wavelength_A(group.voltage_kv)
    kx_px, ky_px = magnified(band.kx_px, band.ky_px, group.mag_matrix)
    kx, ky = kx_px / group.pixel_size_A, ky_px / group.pixel_size_A
    k2 = kx * kx + ky * ky
    theta2 = 2.0 * np.arctan2(ky, kx)
    gamma_static = (cs_phase_factor(lam) * cs * k2 * k2
                    - amplitude_contrast_phase(group.amplitude_contrast)
                    + even_zernike_phase(group.even_zernike, kx, ky))
    odd_coefficients = group.odd_zernike
    if group.has_beam_tilt:
        odd_coefficients = insert_beam_tilt(odd_coefficients, group.beam_tilt_x_mrad,
                                            group.beam_tilt_y_mrad, cs, lam)
    odd = odd_zernike_phase(odd_coefficients, kx, ky)
    if not projection_uses_mag:
        kx_px, ky_px = band.kx_px, band.ky_px
    return PixelTerms(kx_px, ky_px, k2, np.cos(theta2), np.sin(theta2), gamma_static, odd,
                      defocus_phase_factor(lam), cs_phase_factor(lam))


def particle_gamma(terms: PixelTerms, particles: Particles) -> np.ndarray:
    """gamma for each particle and pixel, shape (n, m), radians."""
    ast = astigmatism(particles.defocus_u_A, particles.defocus_v_A, particles.defocus_angle_deg)
    mean, half_diff = ast.mean_A[:, None], ast.half_difference_A[:, None]
    defocus = mean + half_diff * (terms.cos2 * ast.cos_2phi[:, None]
                                  + terms.sin2 * ast.sin_2phi[:, None])
    return (terms.defocus_factor * defocus * terms.k2 + terms.gamma_static
            - np.deg2rad(particles.phase_shift_deg)[:, None])


def particle_envelope(terms: PixelTerms, particles: Particles) -> np.ndarray:
    """exp(-B |k'|^2 / 4) * scale, shape (n, m)."""
    return particles.ctf_scale[:, None] * np.exp(-0.25 * particles.bfactor_A2[:, None] * terms.k2)


def shifted_projections(terms: PixelTerms, particles: Particles, reference: PaddedReference,
                        pixel_size_A: float) -> np.ndarray:
    """P_i(k): central slices with origin shift and odd phase applied, shape (n, m) complex."""
    rot = euler_zyz_to_matrix(particles.rot_deg, particles.tilt_deg, particles.psi_deg)
    coords = central_slice_coordinates(rot, terms.kx_px, terms.ky_px, reference.scale)
    slices = sample_trilinear(reference, coords)
    kx, ky = terms.kx_px / pixel_size_A, terms.ky_px / pixel_size_A
    phase = 2.0 * np.pi * (kx * particles.origin_x_A[:, None] + ky * particles.origin_y_A[:, None])
    return slices * np.exp(1j * (phase + terms.odd_phase))


def predict_band(group: OpticsGroup, particles: Particles, references: dict[int, PaddedReference],
                 band: Band, projection_uses_mag: bool = True) -> np.ndarray:
    """Noise-free predictions of the band pixels, shape (n, m) complex; each particle uses the
    reference of its half set (``references[1]`` or ``references[2]``)."""
    terms = pixel_terms(group, band, projection_uses_mag=projection_uses_mag)
    out = np.empty((len(particles), band.size), dtype=np.complex128)
    for half, ref in references.items():
        sel = np.flatnonzero(particles.half_set == half)
        if sel.size == 0:
            continue
        sub = particles.subset(sel)
        ctf = -np.sin(particle_gamma(terms, sub)) * particle_envelope(terms, sub)
        out[sel] = ctf * shifted_projections(terms, sub, ref, group.pixel_size_A)
    return out


def band_to_images(values: np.ndarray, band: Band) -> np.ndarray:
    """Place band values (n, m) into full rfft2 grids and return real images (n, box, box),
    centred at box//2. Pixels outside the band are zero; column-0 Friedel mates are filled."""
    box = band.box
    grid = np.zeros((values.shape[0], box * (box // 2 + 1)), dtype=np.complex128)
    grid[:, band.flat_index] = values
    grid = grid.reshape(values.shape[0], box, box // 2 + 1)
    # Column kx = 0 stores ky and -ky; the band keeps only ky >= 0: mirror with conjugation.
    col0 = grid[:, :, 0]
    rows = np.arange(1, box // 2)
    col0[:, box - rows] = np.conj(col0[:, rows])
    images = np.fft.irfft2(grid, s=(box, box))
    return np.fft.fftshift(images, axes=(-2, -1))
