"""``csrefine convert``: RELION STAR <-> cryoSPARC .cs for the fields csrefine uses, and the
.cs path tried on the example as a cryoSPARC user would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from csrefine.cli import main
from csrefine.geometry import euler_zyz_to_matrix
from csrefine.relion.star_io import read_particle_star

STAR = "Refine3D/job002/run_data.star"


def test_star_to_cs_to_star_keeps_every_field_csrefine_uses(example_project):
    assert main(["convert", STAR, "particles.cs"]) == 0
    assert main(["convert", "particles.cs", "back.star"]) == 0
    a, b = read_particle_star(STAR), read_particle_star("back.star")
    assert sorted(a.groups) == sorted(b.groups)
    for gid in a.groups:
        ga, gb = a.groups[gid], b.groups[gid]
        assert (ga.cs_mm, ga.voltage_kv, ga.box_size) == (gb.cs_mm, gb.voltage_kv, gb.box_size)
        assert abs(ga.pixel_size_A - gb.pixel_size_A) < 1e-5
    pa, pb = a.particles, b.particles
    for name in ("defocus_u_A", "defocus_v_A", "defocus_angle_deg", "origin_x_A", "origin_y_A"):
        np.testing.assert_allclose(getattr(pb, name), getattr(pa, name), atol=2e-3, err_msg=name)
    np.testing.assert_array_equal(pb.half_set, pa.half_set)
    np.testing.assert_array_equal(pb.optics_group, pa.optics_group)
    np.testing.assert_allclose(euler_zyz_to_matrix(pb.rot_deg, pb.tilt_deg, pb.psi_deg),
                               euler_zyz_to_matrix(pa.rot_deg, pa.tilt_deg, pa.psi_deg), atol=1e-5)
    np.testing.assert_array_equal(b.image_index, a.image_index)


def test_the_cs_path_on_the_converted_example_gives_the_star_paths_cs(example_project):
    halves = ["Refine3D/job002/run_half1_class001_unfil.mrc",
              "Refine3D/job002/run_half2_class001_unfil.mrc"]
    common = ["--half-maps", *halves, "--resolution-high-A", "3.4", "--device", "cpu"]
    assert main(["convert", STAR, "particles.cs", "--project-dir", "."]) == 0
    assert main(["refine", "--particles", STAR, "--out", "outR", *common]) == 0
    assert main(["refine", "--particles", "particles.cs", "--project-dir", ".", "--out", "outC",
                 *common]) == 0
    star = json.loads(Path("outR/csrefine.json").read_text())["groups"]
    cs = json.loads(Path("outC/csrefine.json").read_text())["groups"]
    for r, c in zip(star, cs):
        assert abs(r["cs_refined_mm"] - c["cs_refined_mm"]) < 1e-3
    assert Path("outC/particles.cs").is_file()


def test_convert_refuses_two_files_of_one_kind(example_project, capsys):
    assert main(["convert", STAR, "copy.star"]) == 2
    assert "give a .star and a .cs" in capsys.readouterr().err
    assert not Path("copy.star").exists()


def _micrographs(star):
    from csrefine.relion.star_tables import read_tables

    tables, _ = read_tables(star, lambda block, labels: (("rlnMicrographName",), frozenset())
                            if block == "particles" else None)
    return tables["particles"]["rlnMicrographName"]


def test_star_to_cs_to_star_keeps_each_particles_micrograph(example_project):
    """rlnMicrographName -> location/micrograph_path (project-relative, as blob/path) -> the same
    rlnMicrographName."""
    from cryosparc.dataset import Dataset

    names = _micrographs(STAR)
    assert len(set(names)) > 1
    assert main(["convert", STAR, "particles.cs"]) == 0
    assert list(Dataset.load("particles.cs")["location/micrograph_path"]) == names
    assert main(["convert", "particles.cs", "back.star"]) == 0
    assert _micrographs("back.star") == names


def test_cs_to_star_names_each_particles_micrograph(example_project):
    """rlnMicrographName from location/micrograph_path where the .cs has it, else the stack
    (cryoSPARC extracts one stack per micrograph); never invented names."""
    from cryosparc.dataset import Dataset

    assert main(["convert", STAR, "particles.cs"]) == 0
    dset = Dataset.load("particles.cs").drop_fields(["location/micrograph_path"])
    with open("stacks.cs", "wb") as fh:
        dset.save(fh)
    assert main(["convert", "stacks.cs", "stacks.star"]) == 0
    stacks = [str(p) for p in dset["blob/path"]]
    assert _micrographs("stacks.star") == [p.lstrip(">") for p in stacks]
    dset.add_fields([("location/micrograph_path", "O")])
    dset["location/micrograph_path"] = [f">J2/motioncorrected/mic_{i % 7:02d}.mrc"
                                        for i in range(len(dset))]
    with open("located.cs", "wb") as fh:
        dset.save(fh)
    assert main(["convert", "located.cs", "located.star"]) == 0
    assert _micrographs("located.star") == [f"J2/motioncorrected/mic_{i % 7:02d}.mrc"
                                            for i in range(len(dset))]


def test_a_micrograph_path_leaving_the_project_is_one_line(example_project, capsys):
    """location/micrograph_path is read as blob/path is: a relative path out of the project
    directory is refused, naming the field."""
    from cryosparc.dataset import Dataset

    assert main(["convert", STAR, "particles.cs"]) == 0
    dset = Dataset.load("particles.cs")
    dset["location/micrograph_path"] = ["../elsewhere/mic.mrc"] * len(dset)
    with open("outside.cs", "wb") as fh:
        dset.save(fh)
    capsys.readouterr()
    assert main(["convert", "outside.cs", "outside.star"]) != 0
    err = capsys.readouterr().err.strip()
    assert "location/micrograph_path '../elsewhere/mic.mrc' leaves the project" in err
    assert len(err.splitlines()) == 1 and not Path("outside.star").exists()
