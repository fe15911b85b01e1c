"""Optics groups of different pixel and box sizes in one run (data merged across detectors or
magnifications, as RELION 3.1+ allows): the half maps are projected for each group at its own
pixel size.

The check is independent of the rescaling code: group 2's images are simulated from a map built
from the atomic model directly at group 2's pixel and box size (the same-geometry path that is
checked against relion_project), while the half maps are built at group 1's.
"""

from __future__ import annotations

import numpy as np
import pytest
import starfile
from relion_tools import optics_table, particle_table

from csrefine.atomic_map import density_map
from csrefine.errors import InputError
from csrefine.images import write_map, write_stack
from csrefine.model import OpticsGroup
from csrefine.options import RefineOptions
from csrefine.relion.run import run
from csrefine.simulate import random_particles, simulate_images

N = 1200
GEOMETRY = {1: (64, 1.6), 2: (80, 1.3)}  # box, pixel size (A): 102 A and 104 A boxes
CS_TRUE = {1: 3.0, 2: 2.5}


@pytest.fixture(scope="module")
def mixed_project(structure, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(11)
    tables = []
    for gid, (box, px) in GEOMETRY.items():
        vol = density_map(structure, box, px, b_factor_A2=10.0)
        truth = OpticsGroup(gid, f"g{gid}", 300.0, CS_TRUE[gid], 0.1, px, box)
        parts = random_particles(N, rng, optics_group=gid)
        images = simulate_images(vol, truth, parts, 0.6 * float(vol.sum(axis=0).std()), rng)
        write_stack(root / f"g{gid}.mrcs", images, px)
        tables.append(particle_table(parts, f"g{gid}.mrcs"))
    box1, px1 = GEOMETRY[1]
    vol1 = density_map(structure, box1, px1, b_factor_A2=10.0)
    for h in (1, 2):
        noisy = vol1 + rng.normal(0, 0.01 * vol1.max(), vol1.shape).astype(np.float32)
        write_map(root / f"half{h}.mrc", noisy, px1)
    groups = [OpticsGroup(g, f"g{g}", 300.0, 2.7, 0.1, GEOMETRY[g][1], GEOMETRY[g][0])
              for g in GEOMETRY]
    import pandas as pd
    starfile.write({"optics": optics_table(groups), "particles": pd.concat(tables)},
                   root / "parts.star", overwrite=True)
    return root


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _run(root, out, half_px=None, device="cpu"):
    halves = [root / "half1.mrc", root / "half2.mrc"]
    if half_px is not None:
        import mrcfile
        for i, h in enumerate(list(halves)):
            copy = root / f"{out}_h{i}.mrc"
            write_map(copy, mrcfile.read(h), half_px)
            halves[i] = copy
    (root / out).mkdir()
    return run(root / "parts.star", halves[0], halves[1], root / out, base_dir=root,
               options=RefineOptions(device=device, threads=2, resolution_high_A=3.6, min_particles=50),
               progress=lambda s: None)


@pytest.mark.parametrize("device", DEVICES)
def test_each_group_recovers_its_cs(mixed_project, device):
    res = _run(mixed_project, f"out_{device}", device=device)
    assert res.map_pixel_size_A == pytest.approx(1.6)
    for gid in GEOMETRY:
        g = res.group(gid)
        assert g.refined, g.reason
        print(f"group {gid} (box {GEOMETRY[gid][0]}, {GEOMETRY[gid][1]} A): Cs {g.cs_refined_mm:.4f}"
              f" +- {g.cs_sigma_mm:.4f} (true {CS_TRUE[gid]})")
        assert g.cs_sigma_mm < 0.05  # a mis-scaled reference gives a poor fit (sigma ~0.4 mm)
        assert abs(g.cs_refined_mm - CS_TRUE[gid]) < 4 * g.cs_sigma_mm
    import json
    report = json.loads((mixed_project / f"out_{device}" / "csrefine.json").read_text())
    assert report["map_pixel_size_A"] == pytest.approx(1.6)
    assert [g["band_A"][1] for g in report["groups"]] == pytest.approx([3.6, 3.6])
    written = starfile.read(mixed_project / f"out_{device}" / "particles.star",
                            always_dict=True)["optics"]
    np.testing.assert_allclose(written["rlnSphericalAberration"],
                               [res.group(1).cs_refined_mm, res.group(2).cs_refined_mm], atol=1e-6)


def test_map_header_must_match_a_group(mixed_project):
    with pytest.raises(InputError, match=r"1\.0000 Å \(header\) matches none of the optics groups"):
        _run(mixed_project, "bad_header", half_px=1.0)
    assert not any((mixed_project / "bad_header").iterdir())


def test_map_without_pixel_size_is_refused_when_groups_differ(mixed_project):
    with pytest.raises(InputError, match="header states none"):
        _run(mixed_project, "no_header", half_px=0.0)


def test_cryosparc_path_gives_the_same_cs(mixed_project, cross_paths):
    """The same mixed data as a cryoSPARC .cs (two exposure groups of different blob/psize_A and
    blob/shape) refine to the same Cs as through the STAR path."""
    options = RefineOptions(device="cpu", threads=2, resolution_high_A=3.6, min_particles=50)
    relion, cryo, dset = cross_paths.refine_both(mixed_project / "parts.star",
                                            mixed_project / "half1.mrc",
                                            mixed_project / "half2.mrc", None, mixed_project,
                                            options)
    np.testing.assert_allclose(sorted(set(np.asarray(dset["blob/psize_A"]).tolist())), [1.3, 1.6],
                               rtol=1e-6)
    cross_paths.assert_same_cs(relion, cryo, mixed_project, dset, tol_mm=1e-4)
    assert abs(cryo.group(2).cs_refined_mm - CS_TRUE[2]) < 0.05
