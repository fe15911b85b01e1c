"""Simulated particles from a map with csrefine's forward model (tests, calibration, examples).

The forward model is the one checked against relion_project (tests/test_relion_forward.py), so
these images follow RELION's conventions.
"""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np

from .atomic_map import density_map
from .forward import band_to_images, predict_band
from .fourier import make_band
from .model import OpticsGroup, Particles
from .projection import make_padded_reference


def random_particles(n: int, rng: np.random.Generator, *, optics_group: int = 1,
                     defocus_range_A=(8000.0, 25000.0), astigmatism_A: float = 400.0,
                     max_origin_A: float = 4.0, bfactor_A2: float = 0.0) -> Particles:
    """Uniformly distributed orientations, random defoci, astigmatism and origins."""
    u = rng.uniform(*defocus_range_A, n)
    v = u - rng.uniform(0.0, astigmatism_A, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    return Particles(
        defocus_u_A=u, defocus_v_A=v, defocus_angle_deg=rng.uniform(-180, 180, n),
        phase_shift_deg=np.zeros(n), bfactor_A2=np.full(n, float(bfactor_A2)), ctf_scale=np.ones(n),
        rot_deg=rng.uniform(-180, 180, n), tilt_deg=tilt, psi_deg=rng.uniform(-180, 180, n),
        origin_x_A=rng.uniform(-max_origin_A, max_origin_A, n),
        origin_y_A=rng.uniform(-max_origin_A, max_origin_A, n),
        half_set=(np.arange(n) % 2) + 1, optics_group=np.full(n, optics_group))


def simulate_images(volume: np.ndarray, group: OpticsGroup, particles: Particles,
                    noise_sigma: float, rng: np.random.Generator, batch: int = 512) -> np.ndarray:
    """Images (n, box, box) float32: prediction of ``volume`` for each particle with ``group``'s
    optics (its Cs is the *true* one), plus white Gaussian noise of std ``noise_sigma`` per pixel."""
    box = group.box_size
    band = make_band(box, group.pixel_size_A, 0.0, 0.5 / group.pixel_size_A)
    margin = max(float(np.linalg.norm(group.mag_matrix, 2)), 1.0) * 1.01
    ref = make_padded_reference(volume, 0.5, margin=margin)
    out = np.empty((len(particles), box, box), dtype=np.float32)
    for start in range(0, len(particles), batch):
        idx = np.arange(start, min(start + batch, len(particles)))
        pred = predict_band(group, particles.subset(idx), {1: ref, 2: ref}, band)
        out[idx] = band_to_images(pred, band) + rng.normal(0.0, noise_sigma, (idx.size, box, box))
    return out


class ArrayImages:
    """In-memory image source with the StackReader interface (``read(positions)``)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self):
        return len(self.images)

    def describe(self, position: int) -> str:
        return f"image {position + 1} of the in-memory images"

    def read(self, positions, out=None):
        images = np.asarray(self.images[np.asarray(positions)], dtype=np.float32)
        if out is None:
            return images
        out[...] = images
        return out


def pseudo_atomic_map(box: int, pixel_size_A: float, rng: np.random.Generator,
                      n_atoms: int = 4000, radius_A: float | None = None,
                      b_factor_A2: float = 15.0) -> np.ndarray:
    """Gaussian 'atoms' (carbon-like) scattered in an ellipsoid: a protein-like test map."""
    radius_A = radius_A or 0.3 * box * pixel_size_A
    pts = rng.normal(size=(n_atoms, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    pts *= radius_A * rng.uniform(0, 1, (n_atoms, 1)) ** (1 / 3) * np.array([1.0, 0.8, 0.65])
    # Sum Gaussians in Fourier space: exact, band-limited and fast.
    k = np.fft.fftfreq(box) / pixel_size_A
    kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(box) / pixel_size_A, indexing="ij")
    ft = np.zeros(kz.shape, dtype=np.complex128)
    for chunk in np.array_split(pts, max(1, n_atoms // 500)):
        phase = (kx[..., None] * chunk[:, 0] + ky[..., None] * chunk[:, 1] + kz[..., None] * chunk[:, 2])
        ft += np.exp(-2j * np.pi * phase).sum(axis=-1)
    ft *= np.exp(-0.25 * b_factor_A2 * (kx**2 + ky**2 + kz**2))
    vol = np.fft.irfftn(ft, s=(box,) * 3, axes=(0, 1, 2))
    return np.fft.fftshift(vol).astype(np.float32) * (box**3 / n_atoms) * 0.02


def model_map(box: int, pixel_size_A: float, rng, model_path: Path | None = None) -> np.ndarray:
    if model_path is not None and model_path.is_file():
        return density_map(gemmi.read_structure(str(model_path)), box, pixel_size_A, b_factor_A2=10.0)
    return pseudo_atomic_map(box, pixel_size_A, rng)
