"""Is the Cs sigma honest without RELION in between? (figures, not a test)

Replicates simulated with csrefine's own forward model (:mod:`csrefine.simulate`: a model map of
the packaged 1BD2, random orientations and defoci, white noise), true and nominal Cs 2.7 mm,
refined against the noise-free map (as both half maps) and against half maps with independent
noise of a realistic spectrum (FSC 0.143 at 3.0 Å, :func:`half_maps_with_resolution`),
band to 3.0 Å. Prints z = (Cs - truth) / sigma per replicate and, per kind of reference, its
mean and rms (0 and 1 for an unbiased estimate with an honest sigma).

  python benchmarks/bench_sigma_forward.py --box 128 --n 4000 --noise 25 --replicates 6
"""

from __future__ import annotations

import argparse

import numpy as np
from common import log, z_summary

from csrefine.model import OpticsGroup
from csrefine.options import RefineOptions
from csrefine.pipeline import refine
from csrefine.simulate import ArrayImages, model_map, random_particles, simulate_images

CS_TRUE = 2.7


def half_maps_with_resolution(volume: np.ndarray, pixel_size_A: float, resolution_A: float,
                              rng: np.random.Generator, steepness: float = 8.0):
    """Two half maps of ``volume`` with independent noise whose spectral signal-to-noise ratio
    falls as (k_res / k)^steepness, scaled so that the half-map FSC = SNR / (1 + SNR) crosses
    0.143 at ``resolution_A`` (Å): half maps with a realistic resolution, not noise-free ones.
    Returns (half 1, half 2), float32 [z, y, x]."""
    box = volume.shape[0]
    ft = np.fft.rfftn(volume)
    kz = np.fft.fftfreq(box)[:, None, None]
    ky = np.fft.fftfreq(box)[None, :, None]
    kx = np.fft.rfftfreq(box)[None, None, :]
    k = np.sqrt(kz**2 + ky**2 + kx**2) / pixel_size_A  # 1/Å
    shell = np.rint(k * box * pixel_size_A).astype(np.int64)
    signal = np.bincount(shell.ravel(), (np.abs(ft) ** 2).ravel()) / np.maximum(
        np.bincount(shell.ravel()), 1)
    snr_at_res = 0.143 / (1 - 0.143)
    snr = snr_at_res * (1.0 / resolution_A / np.maximum(k, 1e-6)) ** steepness
    sigma = np.sqrt(signal[shell] / snr / 2)  # per real and imaginary part
    halves = []
    for _ in range(2):
        noise = (rng.normal(size=ft.shape) + 1j * rng.normal(size=ft.shape)) * sigma
        noise[0, 0, 0] = 0
        halves.append(np.fft.irfftn(ft + noise, s=volume.shape).astype(np.float32))
    return tuple(halves)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--pixel", type=float, default=1.1)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--noise", type=float, default=25.0, help="image noise std (map std 1)")
    ap.add_argument("--replicates", type=int, default=6)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    volume = model_map(args.box, args.pixel, rng)
    volume = volume / volume.std()
    truth = OpticsGroup(1, "g", 300.0, CS_TRUE, 0.1, args.pixel, args.box)
    z = {"noise-free map": [], "noisy half maps": []}
    for r in range(args.replicates):
        parts = random_particles(args.n, rng)
        images = ArrayImages(simulate_images(volume, truth, parts, args.noise, rng))
        for kind in z:
            halves = ((volume, volume) if kind == "noise-free map"
                      else half_maps_with_resolution(volume, args.pixel, 3.0, rng))
            g = refine({1: truth}, parts, images, halves,
                       options=RefineOptions(device="cpu", resolution_high_A=3.0, seed=r,
                                             threads=2)).groups[0]
            z[kind].append((g.cs_refined_mm - CS_TRUE) / g.cs_sigma_mm)
            log(f"replicate {r}, {kind}: {g.cs_refined_mm:.4f} ± {g.cs_sigma_mm:.4f} mm, "
                f"z {z[kind][-1]:+.2f}")
    for kind, values in z.items():
        log(f"{kind}: {z_summary(values)}")


if __name__ == "__main__":
    main()
