"""Rotations in RELION's ZYZ Euler convention.

A = Rz(psi) @ Ry(tilt) @ Rz(rot) with Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]] and
Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]. A rotates the reference into the observation: the central
slice of an observation at 2D frequency (kx, ky) samples the reference's 3D transform at A^T (kx, ky, 0).
"""

from __future__ import annotations

import numpy as np


def euler_zyz_to_matrix(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """RELION rotation matrices, shape (..., 3, 3), from angles in degrees (any broadcastable shape)."""
    a, b, g = (np.deg2rad(np.asarray(x, dtype=np.float64)) for x in (rot_deg, tilt_deg, psi_deg))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler_zyz(matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`euler_zyz_to_matrix`: (rot, tilt, psi) in degrees, tilt in [0, 180].

    At tilt 0 or 180 (gimbal lock) rot is set to 0 and the in-plane angle goes into psi.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tilt = np.arccos(np.clip(m[..., 2, 2], -1.0, 1.0))
    regular = np.sin(tilt) > 1e-7
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    psi_regular = np.arctan2(m[..., 1, 2], -m[..., 0, 2])
    psi_locked = np.where(m[..., 2, 2] > 0, np.arctan2(m[..., 0, 1], m[..., 0, 0]),
                          np.arctan2(m[..., 0, 1], -m[..., 0, 0]))
    psi = np.where(regular, psi_regular, psi_locked)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)
