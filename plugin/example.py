"""A small, self-contained example data set in a RELION project layout (no download needed).

``python -m csrefine.example DIR`` writes, under DIR:
  Extract/job001/particles.mrcs     simulated particle images (csrefine's forward model)
  Refine3D/job002/run_data.star     particle STAR (optics + particles tables) stating the
                                    *nominal* Cs, while the images were made with the true Cs
  Refine3D/job002/run_class001.mrc and run_half{1,2}_class001_unfil.mrc, MaskCreate/job003/mask.mrc
  Refine3D/job002/model_docked.cif  the atomic model docked in the map (when a model was used)
The map comes from the atomic model shipped with the package (PDB entry 1BD2, public-domain PDB
data, ``plugin/data/1BD2.cif.gz``), or from a pseudo-atomic model generated here if it is absent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from .fsc import soft_spherical_mask

PACKAGED_MODEL = Path(__file__).resolve().parent / "data" / "1BD2.cif.gz"
from .images import write_map, write_stack
from .model import OpticsGroup, Particles
from .simulate import random_particles, simulate_images


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
    vol = np.fft.irfftn(ft, s=(box,) * 3)
    return np.fft.fftshift(vol).astype(np.float32) * (box**3 / n_atoms) * 0.02


def model_map(box: int, pixel_size_A: float, rng, model_path: Path | None = None) -> np.ndarray:
    if model_path is not None and model_path.is_file():
        import gemmi

        from .atomic_map import density_map
        return density_map(gemmi.read_structure(str(model_path)), box, pixel_size_A, b_factor_A2=10.0)
    return pseudo_atomic_map(box, pixel_size_A, rng)


def particle_table(particles: Particles, stack: str, micrographs: int = 10) -> pd.DataFrame:
    n = len(particles)
    return pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n)],
        "rlnMicrographName": [f"mic{i % micrographs:03d}.mrc" for i in range(n)],
        "rlnDefocusU": particles.defocus_u_A, "rlnDefocusV": particles.defocus_v_A,
        "rlnDefocusAngle": particles.defocus_angle_deg, "rlnPhaseShift": particles.phase_shift_deg,
        "rlnCtfBfactor": particles.bfactor_A2, "rlnCtfScalefactor": particles.ctf_scale,
        "rlnAngleRot": particles.rot_deg, "rlnAngleTilt": particles.tilt_deg,
        "rlnAnglePsi": particles.psi_deg, "rlnOriginXAngst": particles.origin_x_A,
        "rlnOriginYAngst": particles.origin_y_A, "rlnOpticsGroup": particles.optics_group,
        "rlnRandomSubset": particles.half_set,
        "rlnClassNumber": np.ones(n, dtype=int)})


def optics_table(groups: list[OpticsGroup]) -> pd.DataFrame:
    return pd.DataFrame({
        "rlnOpticsGroupName": [g.name for g in groups],
        "rlnOpticsGroup": [g.optics_group for g in groups],
        "rlnMicrographPixelSize": [g.pixel_size_A for g in groups],
        "rlnVoltage": [g.voltage_kv for g in groups],
        "rlnSphericalAberration": [g.cs_mm for g in groups],
        "rlnAmplitudeContrast": [g.amplitude_contrast for g in groups],
        "rlnImagePixelSize": [g.pixel_size_A for g in groups],
        "rlnImageSize": [g.box_size for g in groups],
        "rlnImageDimensionality": [2 for _ in groups]})


def make_example(root, *, n_per_group=(1500, 1500), cs_true_mm=(3.0, 2.7), cs_nominal_mm=2.7,
                 box=88, pixel_size_A=1.6, noise_sigma=1.0, half_map_noise=0.002, seed=0,
                 model_path: Path | None = None, voltage_kv=300.0) -> dict:
    """Write the example project under ``root``; returns its paths and the truth."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    vol = model_map(box, pixel_size_A, rng, model_path)
    parts, images, groups = [], [], []
    for g, (n, cs_true) in enumerate(zip(n_per_group, cs_true_mm), start=1):
        truth = OpticsGroup(g, f"opticsGroup{g}", voltage_kv, cs_true, 0.1, pixel_size_A, box)
        p = random_particles(n, rng, optics_group=g)
        images.append(simulate_images(vol, truth, p, noise_sigma, rng))
        parts.append(p)
        groups.append(OpticsGroup(g, truth.name, voltage_kv, cs_nominal_mm, 0.1, pixel_size_A, box))
    particles = Particles(**{f: np.concatenate([getattr(p, f) for p in parts])
                             for f in parts[0].__dataclass_fields__})
    for d in ("Extract/job001", "Refine3D/job002", "MaskCreate/job003"):
        (root / d).mkdir(parents=True, exist_ok=True)
    stack = "Extract/job001/particles.mrcs"
    write_stack(root / stack, np.concatenate(images), pixel_size_A)
    star = root / "Refine3D/job002/run_data.star"
    starfile.write({"optics": optics_table(groups), "particles": particle_table(particles, stack)},
                   star, overwrite=True)
    for h in (1, 2):
        noisy = vol + rng.normal(0, half_map_noise * float(vol.max()), vol.shape).astype(np.float32)
        write_map(root / f"Refine3D/job002/run_half{h}_class001_unfil.mrc", noisy, pixel_size_A)
    write_map(root / "Refine3D/job002/run_class001.mrc", vol, pixel_size_A)
    write_map(root / "MaskCreate/job003/mask.mrc", soft_spherical_mask(box, 0.4 * box - 4), pixel_size_A)
    model_out = None
    if model_path is not None and Path(model_path).is_file():
        import gemmi

        from .atomic_map import docked_structure
        model_out = root / "Refine3D/job002/model_docked.cif"
        docked = docked_structure(gemmi.read_structure(str(model_path)), box, pixel_size_A)
        docked.make_mmcif_document().write_file(str(model_out))
    return {"model": model_out,"root": root, "star": star, "map": root / "Refine3D/job002/run_class001.mrc",
            "half1": root / "Refine3D/job002/run_half1_class001_unfil.mrc",
            "half2": root / "Refine3D/job002/run_half2_class001_unfil.mrc",
            "mask": root / "MaskCreate/job003/mask.mrc", "cs_true_mm": list(cs_true_mm),
            "volume": vol}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="write csrefine's small example RELION project")
    parser.add_argument("directory")
    parser.add_argument("--model", default=None, help="atomic model to build the map from")
    args = parser.parse_args(argv)
    default_model = PACKAGED_MODEL if PACKAGED_MODEL.is_file() else None
    info = make_example(args.directory, model_path=Path(args.model) if args.model else default_model)
    print(f"example project in {info['root']}: true Cs per optics group {info['cs_true_mm']} mm, "
          f"nominal 2.7 mm in {Path(info['star']).relative_to(info['root'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
