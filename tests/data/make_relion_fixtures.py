"""Make the RELION-written STAR fixtures in tests/data with RELION's own programs (Debian's
RELION 3.1.3: relion_project, relion_reconstruct, relion_postprocess, relion_ctf_refine,
relion_star_handler).

  python tests/data/make_relion_fixtures.py [--work DIR]

A simulated data set: 600 particles of the 1BD2 map (box 64, 1.6 Å) in three optics groups
(300 kV Cs 2.7 mm, 300 kV Cs 2.0 mm, 200 kV Cs 2.7 mm as the STAR states them; the images are
made by relion_project with Cs 0.3 mm larger), half maps by relion_reconstruct, the FSC by
relion_postprocess, then ``relion_ctf_refine --fit_aberr --fit_beamtilt --odd_aberr_max_n 3``
(4th-order even aberrations, beam tilt and 3rd-order odd aberrations per optics group). The
columns are in relion_refine's order, so rows start with a number (and spaces). Fixtures:

* relion31_run_data.star: the particle STAR after relion_star_handler read and wrote it, first
  36 particles (``relion_star_handler --split --size_split 36``);
* relion31_ctf_refine.star: relion_ctf_refine's particles_ctf_refine.star, first 36 particles;
* relion31_two_groups.star: a small table (two optics groups, four particles) as
  relion_star_handler writes it.

(RELION 3.1.3 cannot write RELION 3.0's layout: ``relion_star_handler --ignore_optics`` writes
an empty file; the tests make such tables themselves.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import gemmi
import numpy as np
import pandas as pd
import starfile

from csrefine.atomic_map import PACKAGED_MODEL, density_map
from csrefine.fsc import default_mask
from csrefine.images import write_map
from csrefine.model import OpticsGroup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: relion_tools
from relion_tools import (  # noqa: E402
    optics_table,
    particle_table,
    postprocess,
    project,
    reconstruct_half,
    run_relion,
)

from csrefine.simulate import random_particles

HERE = Path(__file__).resolve().parent
N, BOX, PIXEL_A, KEEP = 600, 64, 1.6, 36
STATED = ((300.0, 2.7), (300.0, 2.0), (200.0, 2.7))  # kV, Cs mm per optics group
CS_ERROR_MM = 0.3


def groups(cs_offset_mm: float) -> list[OpticsGroup]:
    return [OpticsGroup(g, f"opticsGroup{g}", kv, cs + cs_offset_mm, 0.1, PIXEL_A, BOX)
            for g, (kv, cs) in enumerate(STATED, start=1)]


def relion_order(optics, particles, coordinates) -> dict:
    """The columns in the order relion_refine writes them: rows that start with a number
    (right-aligned, so with spaces) in both tables."""
    first = ["rlnOpticsGroup", "rlnOpticsGroupName"]
    optics = optics[first + [c for c in optics.columns if c not in first]]
    particles.insert(0, "rlnCoordinateX", coordinates[:, 0])
    particles.insert(1, "rlnCoordinateY", coordinates[:, 1])
    return {"optics": optics, "particles": particles}


def simulate(d: Path) -> None:
    rng = np.random.default_rng(5)
    structure = gemmi.read_structure(str(PACKAGED_MODEL))
    write_map(d / "map.mrc", density_map(structure, BOX, PIXEL_A, b_factor_A2=10.0), PIXEL_A)
    write_map(d / "mask.mrc", default_mask(BOX), PIXEL_A)
    parts = random_particles(N, rng, max_origin_A=3.0)
    parts.optics_group = np.arange(N) % 3 + 1
    coordinates = rng.uniform(0.0, 4000.0, (N, 2))
    for name, stack, cs_offset in (("truth", "none.mrcs", CS_ERROR_MM),
                                   ("particles", "proj.mrcs", 0.0)):
        starfile.write(relion_order(optics_table(groups(cs_offset)),
                                    particle_table(parts, stack, micrographs=7), coordinates),
                       d / f"{name}.star", overwrite=True)
    project("map.mrc", "truth.star", "proj", PIXEL_A, white_noise=2.0, cwd=d)
    for h in (1, 2):
        reconstruct_half("particles.star", f"run_half{h}_class001_unfil.mrc", h, cwd=d)
    postprocess("run_half1_class001_unfil.mrc", "mask.mrc", "PostProcess/postprocess", PIXEL_A,
                cwd=d)
    run_relion(["relion_ctf_refine", "--i", "particles.star", "--f",
                "PostProcess/postprocess.star", "--o", "CtfRefine/", "--fit_aberr",
                "--fit_beamtilt", "--odd_aberr_max_n", 3, "--j", 2], cwd=d)


def two_groups(d: Path) -> Path:
    """Two optics groups (beam tilt and even Zernike terms in one) and four particles whose
    rows start with a number."""
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
        "rlnAmplitudeContrast": [0.1, 0.07], "rlnSphericalAberration": [2.7, 2.7],
        "rlnVoltage": [300.0, 200.0], "rlnImagePixelSize": [1.0, 1.0], "rlnImageSize": [64, 64],
        "rlnBeamTiltX": [0.3, 0.0], "rlnBeamTiltY": [-0.2, 0.0],
        "rlnEvenZernike": ["[0,0.1,0.2,0,0,0,0.05]", "[]"]})
    particles = pd.DataFrame({
        "rlnCoordinateX": [812.0, 1812.0, 12.0, 3812.0],
        "rlnImageName": [f"{i:06d}@stack.mrcs" for i in range(1, 5)],
        "rlnDefocusU": np.linspace(10000, 20000, 4), "rlnDefocusV": np.linspace(9900, 19900, 4),
        "rlnDefocusAngle": 12.5, "rlnAngleRot": 1.0, "rlnAngleTilt": 2.0, "rlnAnglePsi": 3.0,
        "rlnOriginXAngst": 0.5, "rlnOriginYAngst": -0.5, "rlnOpticsGroup": [1, 2, 1, 2],
        "rlnRandomSubset": [1, 2, 2, 1]})
    starfile.write({"optics": optics, "particles": particles}, d / "two.star", overwrite=True)
    run_relion(["relion_star_handler", "--i", "two.star", "--o", "two_relion.star"], cwd=d)
    return d / "two_relion.star"


def first_rows(d: Path, src: Path, dst: Path) -> None:
    """The first KEEP particles of ``src``, written by relion_star_handler, as ``dst``."""
    run_relion(["relion_star_handler", "--i", src, "--o", d / "split.star", "--split",
                "--size_split", KEEP, "--nr_split", 1], cwd=d)
    shutil.copyfile(d / "split_split1.star", dst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, help="working directory (kept); default: a temporary one")
    args = p.parse_args()
    d = args.work or Path(tempfile.mkdtemp(prefix="relion_fixtures_"))
    d.mkdir(parents=True, exist_ok=True)
    simulate(d)
    shutil.copyfile(two_groups(d), HERE / "relion31_two_groups.star")
    first_rows(d, d / "particles.star", HERE / "relion31_run_data.star")
    first_rows(d, d / "CtfRefine/particles_ctf_refine.star", HERE / "relion31_ctf_refine.star")
    if args.work is None:
        shutil.rmtree(d)
    print(f"wrote the fixtures into {HERE}")


if __name__ == "__main__":
    main()
