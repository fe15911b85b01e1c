"""Half maps by Fourier insertion (csrefine.reconstruct) against csrefine's own forward model."""

import subprocess

import mrcfile
import numpy as np
import pytest

from csrefine.forward import predict_band
from csrefine.fsc import default_mask, fsc_curve, shell_index
from csrefine.model import OpticsGroup
from csrefine.projection import PaddedReference, gridding_correct
from csrefine.reconstruct import (
    insert_particles,
    insertion_band,
    insertion_grid,
    map_from_insertions,
    reconstruct_half_maps,
)
from csrefine.simulate import pseudo_atomic_map, random_particles, simulate_images


def test_insertion_is_the_adjoint_of_the_prediction():
    """Re <insert(X), G> = Re <X, predict(G)> for random grid data G and random images X: the
    same slice coordinates, trilinear corners, Friedel conjugation, CTF, origin shift and odd
    phase as the forward model (a group with beam tilt and odd Zernike terms)."""
    rng = np.random.default_rng(0)
    box = 16
    group = OpticsGroup(1, "g", 300.0, 2.7, 0.1, 1.5, box, odd_zernike=np.array([0.3, -0.2]),
                        beam_tilt_x_mrad=0.4, has_beam_tilt=True)
    particles = random_particles(12, rng)
    images = rng.normal(size=(12, box, box))
    grid = insertion_grid(box)
    numerator = np.zeros(grid.data.shape, dtype=np.complex128)
    weight = np.zeros(grid.data.shape)
    insert_particles(numerator, weight, grid, group, particles, images)

    g = (rng.normal(size=grid.data.shape) + 1j * rng.normal(size=grid.data.shape))
    ref = PaddedReference(g.astype(np.complex64), grid.radius, box, grid.pad)
    band = insertion_band(group)
    prediction = predict_band(group, particles, {1: ref, 2: ref}, band)
    x = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1))).reshape(12, -1)[:, band.flat_index]
    lhs = np.vdot(numerator, ref.data.astype(np.complex128)).real
    rhs = np.vdot(x, prediction).real
    assert abs(lhs - rhs) < 1e-9 * abs(rhs)
    assert np.all(weight >= 0) and weight.sum() > 0


def test_noise_free_projections_reconstruct_the_map_to_high_resolution():
    """Each half map of 200 noise-free projections (nominal CTF = true CTF) has an FSC >= 0.99
    with the map up to two shells short of Nyquist and the map's amplitude within 10%."""
    rng = np.random.default_rng(1)
    box, pixel_size_A = 32, 1.6
    volume = pseudo_atomic_map(box, pixel_size_A, rng)
    group = OpticsGroup(1, "g", 300.0, 2.7, 0.1, pixel_size_A, box)
    particles = random_particles(400, rng)
    images = simulate_images(volume, group, particles, 0.0, rng)
    mask = default_mask(box)
    shell = shell_index(box).ravel()
    reference = np.fft.rfftn(volume * mask).ravel()
    top = box // 2 - 2
    for half in reconstruct_half_maps({1: group}, particles, images):
        assert half.shape == volume.shape and half.dtype == np.float32
        fsc = fsc_curve(half, volume, mask)
        assert fsc[1:top + 1].min() >= 0.99, np.round(fsc, 3)
        ft = np.fft.rfftn(half * mask).ravel()
        gain = (np.bincount(shell, (ft * np.conj(reference)).real)
                / np.bincount(shell, np.abs(reference) ** 2))
        assert np.all(np.abs(gain[1:top + 1] - 1.0) < 0.1), np.round(gain, 3)


def test_a_sample_in_the_x0_plane_stands_for_its_friedel_mate_too():
    """One inserted value v at padded-grid frequency (x, y, z) = (0, 5, 3): the map is the real
    wave (2 / N^3) Re(v exp(2 pi i (5 y + 3 z) / N)) / (1 + regulariser), N = pad * box, as if
    conj(v) had been inserted at (0, -5, -3) as well, then cropped and gridding-corrected."""
    box = 16
    grid = insertion_grid(box)
    r, n = grid.radius, grid.pad * box
    numerator = np.zeros(grid.data.shape, dtype=np.complex128)
    weight = np.zeros(grid.data.shape)
    v = 1.0 + 2.0j
    numerator[r + 3, r + 5, 0], weight[r + 3, r + 5, 0] = v, 1.0
    half = map_from_insertions(numerator, weight, grid, regulariser=0.5)
    c = np.arange(box) - box // 2
    z, y = c[:, None, None], c[None, :, None]
    wave = 2.0 / n**3 * np.real(v * np.exp(2j * np.pi * (5 * y + 3 * z) / n)) / 1.5
    expected = gridding_correct(np.broadcast_to(wave, (box,) * 3), grid.pad)
    assert np.allclose(half, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.relion
def test_the_half_maps_agree_with_relion_reconstruct(relion, model_path, tmp_path):
    """The example's reconstructed half map 1 and relion_reconstruct's of the same particles
    (--ctf --subset 1: the nominal CTF, pad 2) have an FSC >= 0.95 up to two shells short of
    Nyquist: the same conventions for poses, origins, CTF and the map's centre."""
    from csrefine.relion.example import make_example

    box = 48
    info = make_example(tmp_path, n_per_group=(300, 300), box=box, seed=2, model_path=model_path,
                        half_maps_from_particles=True)
    out = tmp_path / "relion_half1.mrc"
    subprocess.run(["relion_reconstruct", "--i", str(info["star"]), "--o", str(out), "--ctf",
                    "--subset", "1", "--pad", "2"], cwd=tmp_path, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fsc = fsc_curve(mrcfile.read(info["half1"]), mrcfile.read(out), mrcfile.read(info["mask"]))
    assert fsc[1:box // 2 - 1].min() >= 0.95, np.round(fsc, 3)
