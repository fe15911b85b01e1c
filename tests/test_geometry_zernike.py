"""ZYZ rotations and Zernike / beam-tilt phases in RELION's conventions."""

import numpy as np
import pytest

from csrefine.ctf import electron_wavelength_A
from csrefine.geometry import euler_zyz_to_matrix, matrix_to_euler_zyz
from csrefine.zernike import (
    even_zernike_phase,
    insert_beam_tilt,
    odd_zernike_phase,
    rescale_beam_tilt,
    zernike_nm,
)


def test_euler_matrix_is_a_rotation_and_round_trips():
    rng = np.random.default_rng(0)
    rot, tilt, psi = rng.uniform(-180, 180, 200), rng.uniform(0, 180, 200), rng.uniform(-180, 180, 200)
    m = euler_zyz_to_matrix(rot, tilt, psi)
    assert np.allclose(m @ np.swapaxes(m, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(m), 1.0)
    assert np.allclose(euler_zyz_to_matrix(*matrix_to_euler_zyz(m)), m, atol=1e-10)
    locked = euler_zyz_to_matrix([10, 20], [0, 180], [30, -40])
    assert np.allclose(euler_zyz_to_matrix(*matrix_to_euler_zyz(locked)), locked, atol=1e-10)


def test_euler_matrix_is_rz_psi_ry_tilt_rz_rot():
    def rz(a):
        c, s = np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    def ry(b):
        c, s = np.cos(np.deg2rad(b)), np.sin(np.deg2rad(b))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    assert np.allclose(euler_zyz_to_matrix(25, 40, -70), rz(-70) @ ry(40) @ rz(25))


def test_z40_is_the_unnormalised_spherical_term():
    kx, ky = np.array([0.1, 0.3]), np.array([0.2, -0.1])
    rho2 = kx**2 + ky**2
    assert np.allclose(zernike_nm(4, 0, kx, ky), 6 * rho2**2 - 6 * rho2 + 1)
    c = np.zeros(7)
    c[6] = 0.7  # RELION's index 6
    assert np.allclose(even_zernike_phase(c, kx, ky), 0.7 * (6 * rho2**2 - 6 * rho2 + 1))


def test_beam_tilt_phase_is_relions_axial_coma():
    lam = electron_wavelength_A(300)
    kx, ky = np.array([0.05, 0.2, -0.3]), np.array([0.1, -0.25, 0.02])
    tx, ty, cs = 0.4, -0.7, 2.7
    phase = odd_zernike_phase(insert_beam_tilt([], tx, ty, cs, lam), kx, ky)
    expected = -2 * np.pi * cs * 1e7 * lam**2 * 1e-3 * (tx * kx + ty * ky) * (kx**2 + ky**2)
    assert np.allclose(phase, expected, rtol=1e-10, atol=1e-12)


def test_rescaled_beam_tilt_keeps_the_coma_when_cs_changes():
    lam = electron_wavelength_A(300)
    kx, ky = np.array([0.2, -0.1]), np.array([0.1, 0.3])
    before = odd_zernike_phase(insert_beam_tilt([], 0.5, 0.2, 2.7, lam), kx, ky)
    tx, ty = rescale_beam_tilt([0.5, 0.2], 2.7, 3.1)
    after = odd_zernike_phase(insert_beam_tilt([], tx, ty, 3.1, lam), kx, ky)
    assert np.allclose(before, after)
    with pytest.raises(ValueError):
        rescale_beam_tilt([0.1, 0.1], 2.7, 0.0)


def test_z40_holds_six_c_of_k4_and_folding_it_out_keeps_the_rest_of_the_phase():
    """RELION's Z4^0 = 6 rho^4 - 6 rho^2 + 1: its k^4 part is 6 c; folding it out leaves a phase
    that differs from the input's by exactly that k^4 term, anisotropic terms untouched (also
    with Z6^0, whose k^4 part is -30 c)."""
    from csrefine.zernike import even_zernike_phase, fold_out_k4, isotropic_k4_rad

    rng = np.random.default_rng(4)
    for count in (7, 9, 15):  # up to Z4^0, up to Z4^4, up to Z6^...
        c = rng.normal(0, 0.5, count)
        k4 = isotropic_k4_rad(c)
        expected_k4 = 6 * c[6] - (30 * c[12] if count > 12 else 0.0)
        assert k4 == pytest.approx(expected_k4, rel=1e-12)
        folded = fold_out_k4(c)
        assert folded.shape == c.shape and isotropic_k4_rad(folded) == pytest.approx(0, abs=1e-12)
        kx, ky = rng.uniform(-0.4, 0.4, (2, 500))
        k2 = kx * kx + ky * ky
        np.testing.assert_allclose(even_zernike_phase(c, kx, ky) - even_zernike_phase(folded, kx, ky),
                                   k4 * k2 * k2, atol=1e-12)
        anisotropic = [i for i, (n, m) in enumerate(
            [(n, m) for n in range(0, 8, 2) for m in range(-n, n + 1, 2)][:count]) if m != 0]
        np.testing.assert_array_equal(folded[anisotropic], c[anisotropic])
