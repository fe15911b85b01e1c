"""Particle tables without an optics table (RELION 3.0's layout): optics groups from the
per-particle optics, the box from the stack header, the refined Cs written per particle."""

from pathlib import Path

import numpy as np
import pytest
from relion_tools import relion_rewrite, star_values

from csrefine.errors import InputError
from csrefine.images import write_stack
from csrefine.relion.star_io import read_particle_star, write_updated_star

# kV, Cs, Q0, beam tilt X of each particle: groups in order of first appearance 1, 2, 1, 3, 2, 3
OPTICS = [(300, 2.7, 0.1, 0.0), (300, 2.0, 0.1, 0.0), (300, 2.7, 0.1, 0.0), (200, 2.7, 0.07, 0.0),
          (300, 2.0, 0.1, 0.0), (200, 2.7, 0.07, 0.0)]


def relion30_table(optics=OPTICS, detector=True, tilt=False) -> str:
    """A RELION 3.0 particle table (``data_``, right-aligned fields like RELION's writer)."""
    columns = ["rlnCoordinateX", "rlnImageName", "rlnMicrographName", "rlnDefocusU",
               "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
               "rlnAmplitudeContrast", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
               "rlnOriginX", "rlnOriginY", "rlnRandomSubset", "rlnGroupNumber"]
    columns += ["rlnMagnification", "rlnDetectorPixelSize"] if detector else ["rlnImagePixelSize"]
    columns += ["rlnBeamTiltX", "rlnBeamTiltY"] if tilt else []
    rows = []
    for i, (kv, cs, q0, tx) in enumerate(optics):
        values = [f"{100.0 * i:.6f}", f"{i + 1:06d}@stack30.mrcs", f"mic{i % 2}.mrc",
                  f"{10000.0 + 1000 * i:.6f}", f"{9900.0 + 1000 * i:.6f}", "12.500000",
                  f"{kv:.6f}", f"{cs:.6f}", f"{q0:.6f}", "1.000000", "2.000000", "3.000000",
                  "0.500000", "-1.00000", str(i % 2 + 1), "1"]
        values += ["10000.000000", "1.600000"] if detector else ["1.600000"]
        values += [f"{tx:.6f}", "0.100000"] if tilt else []
        rows.append(" ".join(f"{v:>12}" for v in values) + " \n")
    header = "".join(f"_{c} #{i + 1} \n" for i, c in enumerate(columns))
    return "\ndata_\n\nloop_ \n" + header + "".join(rows) + " \n\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path / "stack30.mrcs", np.zeros((6, 64, 64), np.float32), 1.6)
    return tmp_path


def test_groups_are_the_distinct_optics_in_order_of_first_appearance(project):
    (project / "p.star").write_text(relion30_table())
    star = read_particle_star(project / "p.star")
    assert not star.optics_table and star.particle_block == ""
    assert star.particles.optics_group.tolist() == [1, 2, 1, 3, 2, 3]
    got = {g: (o.voltage_kv, o.cs_mm, o.amplitude_contrast, o.pixel_size_A, o.box_size, o.name)
           for g, o in star.groups.items()}
    assert got == {1: (300, 2.7, 0.1, 1.6, 64, "opticsGroup1"),
                   2: (300, 2.0, 0.1, 1.6, 64, "opticsGroup2"),
                   3: (200, 2.7, 0.07, 1.6, 64, "opticsGroup3")}
    np.testing.assert_allclose(star.particles.origin_y_A, -1.6)  # rlnOriginY in pixels
    np.testing.assert_allclose(star.particles.origin_x_A, 0.8)


def test_beam_tilt_and_image_pixel_size_make_groups_too(project):
    optics = [(300, 2.7, 0.1, 0.0), (300, 2.7, 0.1, 0.3), (300, 2.7, 0.1, 0.0)]
    (project / "p.star").write_text(relion30_table(optics, detector=False, tilt=True))
    star = read_particle_star(project / "p.star")
    assert star.particles.optics_group.tolist() == [1, 2, 1]
    assert star.groups[2].beam_tilt_x_mrad == 0.3 and star.groups[2].has_beam_tilt
    assert star.groups[1].pixel_size_A == 1.6


def test_the_refined_cs_goes_into_each_particle_of_its_group(project):
    (project / "p.star").write_text(relion30_table(tilt=True))
    star = read_particle_star(project / "p.star")
    write_updated_star(star, project / "out.star", {2: 2.2345}, {2: 50.0}, {2: (0.25, 0.125)})
    before, after = star_values(project / "p.star")[""], star_values(project / "out.star")[""]
    changed = {c for c in before if before[c] != after[c]}
    assert changed == {"rlnSphericalAberration", "rlnDefocusU", "rlnDefocusV", "rlnBeamTiltX",
                       "rlnBeamTiltY"}
    assert after["rlnSphericalAberration"] == ["2.700000", "2.234500000", "2.700000", "2.700000",
                                               "2.234500000", "2.700000"]
    assert after["rlnBeamTiltX"][1] == "0.250000000" and after["rlnBeamTiltX"][0] == "0.000000"
    assert after["rlnDefocusU"][4] == "14050.000000" and after["rlnDefocusU"][3] == "13000.000000"
    out = read_particle_star(project / "out.star")
    assert out.particles.optics_group.tolist() == star.particles.optics_group.tolist()
    assert out.groups[2].cs_mm == 2.2345
    with pytest.raises(ValueError, match="no rlnEvenZernike"):
        write_updated_star(star, project / "z.star", {2: 2.0}, {}, {}, {2: [0.0]})


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("_rlnVoltage", "_rlnVoltageX"),
     "no data_optics table, and data_ does not state the optics per particle "
     r"\(no _rlnVoltage\)"),
    (lambda t: t.replace("_rlnDetectorPixelSize", "_rlnOther"), "states no pixel size"),
    (lambda t: t.replace("_rlnOriginX #", "_rlnOther #"), "lacks _rlnOriginXAngst"),
    (lambda t: t.replace("stack30.mrcs", "missing.mrcs"), "missing.mrcs"),
    (lambda t: t.replace("    1.600000", "   -1.600000"),
     r"_rlnDetectorPixelSize/_rlnMagnification.*row 1"),
])
def test_bad_tables_are_named(project, edit, message):
    (project / "p.star").write_text(edit(relion30_table()))
    with pytest.raises(InputError, match=message):
        read_particle_star(project / "p.star")


@pytest.mark.relion
def test_relion_converts_the_written_table_with_the_refined_cs(project, relion):
    """relion_star_handler (RELION 3.1.3) converts the output of a RELION 3.0 table into the
    same optics groups, with the refined Cs in its optics table."""
    (project / "p.star").write_text(relion30_table())
    star = read_particle_star(project / "p.star")
    write_updated_star(star, project / "out.star", {2: 2.2345}, {2: 50.0}, {})
    converted = relion_rewrite("out.star", "relion.star", cwd=project)
    assert converted["optics"]["rlnSphericalAberration"] == ["2.700000", "2.234500", "2.700000"]
    assert converted["optics"]["rlnVoltage"] == ["300.000000", "300.000000", "200.000000"]
    assert converted["particles"]["rlnOpticsGroup"] == ["1", "2", "1", "3", "2", "3"]
    assert converted["particles"]["rlnDefocusU"][1] == "11050.000000"


def test_a_relion30_table_refines_as_its_relion31_form(example_project):
    """The example's first optics group as a RELION 3.0 table (optics per particle, origins in
    pixels, no optics table): the same Cs as from the RELION 3.1 table, written into each
    particle's rlnSphericalAberration."""
    import json

    import starfile

    from csrefine.cli import main

    blocks = starfile.read("Refine3D/job002/run_data.star", always_dict=True)
    optics, particles = blocks["optics"].iloc[:1], blocks["particles"]
    particles = particles[particles["rlnOpticsGroup"] == 1].copy()
    starfile.write({"optics": optics, "particles": particles}, "group1.star", overwrite=True)
    px = float(optics["rlnImagePixelSize"].iloc[0])
    for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        particles[column] = float(optics[column].iloc[0])
    particles["rlnMagnification"], particles["rlnDetectorPixelSize"] = 10000.0, px
    particles["rlnOriginX"] = particles.pop("rlnOriginXAngst") / px
    particles["rlnOriginY"] = particles.pop("rlnOriginYAngst") / px
    starfile.write({"images": particles.drop(columns=["rlnOpticsGroup"])}, "group1_30.star",
                   overwrite=True)
    common = ["--half-maps", "Refine3D/job002/run_half1_class001_unfil.mrc",
              "Refine3D/job002/run_half2_class001_unfil.mrc", "--resolution-high-A", "3.4",
              "--device", "cpu"]
    for name in ("group1", "group1_30"):
        assert main(["refine", "--particles", f"{name}.star", "--out", f"out_{name}", *common]) == 0
    cs = [json.loads(Path(f"out_{n}/csrefine.json").read_text())["groups"][0]["cs_refined_mm"]
          for n in ("group1", "group1_30")]
    assert cs[0] == pytest.approx(cs[1], abs=1e-6) and abs(cs[0] - 3.0) < 0.1
    written = star_values("out_group1_30/particles.star")["images"]["rlnSphericalAberration"]
    assert len(set(written)) == 1 and float(written[0]) == pytest.approx(cs[1], abs=1e-6)
    assert len(written[0].split(".")[1]) == 9
