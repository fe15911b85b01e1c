"""Physics of the CTF module: wavelength, phase factors, signs and astigmatism."""

import numpy as np
import pytest

from csrefine.ctf import (
    amplitude_contrast_phase,
    cs_phase_factor,
    defocus_phase_factor,
    electron_wavelength_A,
)

# The textbook CTF phase (csrefine.ctf's module docstring), evaluated directly: the reference the
# package's precomputed per-pixel terms are tested against.

def astigmatic_defocus_A(kx, ky, defocus_u_A, defocus_v_A, defocus_angle_deg):
    """Defocus along the direction of (kx, ky), in Angstrom.

    Parameters broadcast against each other: e.g. kx, ky of shape (npix,) and per-particle
    defocus arrays of shape (n, 1) give (n, npix).
    """
    theta = np.arctan2(ky, kx)
    phi = np.deg2rad(defocus_angle_deg)
    c2 = np.cos(theta - phi) ** 2
    return defocus_u_A * c2 + defocus_v_A * (1.0 - c2)


def ctf_gamma(kx, ky, *, defocus_u_A, defocus_v_A, defocus_angle_deg, cs_mm, voltage_kv,
              amplitude_contrast, phase_shift_deg=0.0, even_phase_rad=0.0):
    """CTF phase gamma in radians (csrefine.ctf's module docstring); inputs broadcast as in
    :func:`astigmatic_defocus_A`. ``even_phase_rad`` is an extra phase added to gamma (RELION's
    rlnEvenZernike sum, already evaluated at (kx, ky))."""
    lam = electron_wavelength_A(voltage_kv)
    k2 = kx * kx + ky * ky
    df = astigmatic_defocus_A(kx, ky, defocus_u_A, defocus_v_A, defocus_angle_deg)
    return (defocus_phase_factor(lam) * df * k2 + cs_phase_factor(lam) * cs_mm * k2 * k2
            - np.deg2rad(phase_shift_deg) - amplitude_contrast_phase(amplitude_contrast)
            + even_phase_rad)


@pytest.mark.parametrize("kv, expected", [(300, 0.019687), (200, 0.025079), (100, 0.037014)])
def test_wavelength_matches_relativistic_values(kv, expected):
    assert electron_wavelength_A(kv) == pytest.approx(expected, abs=2e-6)


def test_bad_voltage_and_amplitude_contrast_are_refused():
    with pytest.raises(ValueError):
        electron_wavelength_A(0)
    with pytest.raises(ValueError):
        amplitude_contrast_phase(1.0)


def test_low_frequency_contrast_is_positive_for_underfocus():
    # RELION: CTF = -sin(gamma), gamma ~ -pi*lambda*df*k^2 - K3: positive just above k = 0.
    k = np.array([0.0, 0.01])
    g = ctf_gamma(k, 0 * k, defocus_u_A=15000, defocus_v_A=15000, defocus_angle_deg=0, cs_mm=2.7,
                  voltage_kv=300, amplitude_contrast=0.1)
    assert np.all(-np.sin(g) > 0)  # CTF = -sin(gamma)
    assert -np.sin(g)[0] == pytest.approx(0.1, rel=1e-6)  # sin(K3) = Q0


def test_cs_term_is_pi_over_two_cs_lambda_cubed_k4():
    lam = electron_wavelength_A(300)
    k = 0.3
    g0 = ctf_gamma(k, 0.0, defocus_u_A=0, defocus_v_A=0, defocus_angle_deg=0, cs_mm=0.0,
                   voltage_kv=300, amplitude_contrast=0.0)
    g1 = ctf_gamma(k, 0.0, defocus_u_A=0, defocus_v_A=0, defocus_angle_deg=0, cs_mm=2.0,
                   voltage_kv=300, amplitude_contrast=0.0)
    assert g1 - g0 == pytest.approx(0.5 * np.pi * 2.0e7 * lam**3 * k**4, rel=1e-12)
    assert cs_phase_factor(lam) == pytest.approx(0.5 * np.pi * lam**3 * 1e7)


def test_astigmatism_follows_defocus_angle():
    # Along the angle direction the defocus is U, perpendicular to it V.
    ang = 30.0
    t = np.deg2rad(ang)
    assert astigmatic_defocus_A(np.cos(t), np.sin(t), 20000, 18000, ang) == pytest.approx(20000)
    assert astigmatic_defocus_A(-np.sin(t), np.cos(t), 20000, 18000, ang) == pytest.approx(18000)


def test_the_pipelines_gamma_is_the_ctf_formula():
    """forward.particle_gamma (what the refinement evaluates, per particle and band pixel, with
    the per-pixel terms precomputed) equals the textbook formula ctf_gamma (above) plus the even
    Zernike phase, for astigmatic, phase-shifted particles with a magnification matrix."""
    from csrefine.forward import magnified, particle_gamma, pixel_terms
    from csrefine.fourier import make_band
    from csrefine.model import OpticsGroup
    from csrefine.simulate import random_particles
    from csrefine.zernike import even_zernike_phase

    even = np.array([0.0, 0.0, 0.0, 0.3, -0.2, 0.1, 0.5])
    group = OpticsGroup(1, "g", 200.0, 2.1, 0.07, 1.3, 48, even_zernike=even,
                        mag_matrix=np.array([[1.01, 0.004], [-0.003, 0.99]]))
    band = make_band(48, 1.3, 1 / 30.0, 1 / 3.0)
    parts = random_particles(5, np.random.default_rng(2))
    parts.phase_shift_deg[:] = np.array([0.0, 10.0, 45.0, 90.0, -20.0])
    kx_px, ky_px = magnified(band.kx_px, band.ky_px, group.mag_matrix)
    kx, ky = kx_px / group.pixel_size_A, ky_px / group.pixel_size_A
    expected = ctf_gamma(kx, ky, defocus_u_A=parts.defocus_u_A[:, None],
                         defocus_v_A=parts.defocus_v_A[:, None],
                         defocus_angle_deg=parts.defocus_angle_deg[:, None], cs_mm=group.cs_mm,
                         voltage_kv=group.voltage_kv, amplitude_contrast=group.amplitude_contrast,
                         phase_shift_deg=parts.phase_shift_deg[:, None],
                         even_phase_rad=even_zernike_phase(even, kx, ky))
    np.testing.assert_allclose(particle_gamma(pixel_terms(group, band), parts), expected,
                               rtol=0, atol=1e-9)


def test_astigmatism_decomposition_matches_astigmatic_defocus():
    """mean + half_difference * cos(2 (theta - phi)) == dfU cos^2(theta - phi) + dfV sin^2."""
    from csrefine.ctf import astigmatism
    rng = np.random.default_rng(0)
    u, v = rng.uniform(5000, 30000, (2, 7, 1))
    angle = rng.uniform(-180, 180, (7, 1))
    kx, ky = rng.normal(size=(2, 50))
    ast = astigmatism(u, v, angle)
    theta2 = 2.0 * np.arctan2(ky, kx)
    df = ast.mean_A + ast.half_difference_A * (np.cos(theta2) * ast.cos_2phi
                                               + np.sin(theta2) * ast.sin_2phi)
    np.testing.assert_allclose(df, astigmatic_defocus_A(kx, ky, u, v, angle), rtol=1e-12)
    assert np.all(ast.half_difference_A * np.sign(u - v) >= 0)
