"""The inputs real users bring, on data made with RELION itself: half maps given the
other way round or from another split, particles after relion_ctf_refine's 4th-order fit, stack
headers that disagree with the optics table, data whose Cs is right."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from relion_tools import project, simulate_dataset

from csrefine.options import RefineOptions

CS_TRUE, CS_NOMINAL = 3.0, 2.7
OPTIONS = RefineOptions(threads=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory, structure, relion):
    """5,000 particles simulated by relion_project (box 96, 1.1 A, true Cs 3.0 mm, the STAR
    says 2.7), half maps by relion_reconstruct from the STAR's half sets."""
    return simulate_dataset(tmp_path_factory.mktemp("relion_data"), structure, n=5000,
                            cs_true_mm=CS_TRUE, cs_nominal_mm=CS_NOMINAL, box=96, seed=9)


def _run(data, out, star=None, halves=(1, 2)):
    from csrefine.relion.run import run

    half = [data["half1"], data["half2"]]
    refinement = run(star or data["star"], half[halves[0] - 1], half[halves[1] - 1], out,
                     mask=data["mask"], options=OPTIONS, base_dir=data["dir"])
    return refinement, json.loads((Path(out) / "csrefine.json").read_text())


@pytest.mark.relion
def test_half_maps_given_the_other_way_round_are_swapped_with_a_warning(data, tmp_path):
    given, report_given = _run(data, tmp_path / "given")
    swapped, report_swapped = _run(data, tmp_path / "swapped", halves=(2, 1))
    g, s = given.group(1), swapped.group(1)
    print(f"as given: {g.half_maps}, Cs {g.cs_refined_mm:.4f}; given swapped: {s.half_maps}, "
          f"Cs {s.cs_refined_mm:.4f}")
    assert g.half_maps["verdict"] == "as given" and g.half_maps["z"] > 10
    assert s.half_maps["verdict"] == "swapped" and s.half_maps["z"] < -10
    assert abs(g.cs_refined_mm - CS_TRUE) < 0.03 and s.cs_refined_mm == g.cs_refined_mm
    assert not report_given["warnings"]
    assert any("other way round" in w for w in report_swapped["warnings"])


@pytest.mark.relion
def test_half_sets_that_the_maps_do_not_follow_are_not_refined(data, tmp_path):
    """rlnRandomSubset shuffled: each particle's noise is in one map or the other at random; no
    prediction is unbiased, so the group keeps its nominal Cs, with the reason."""
    blocks = starfile.read(data["star"], always_dict=True)
    subsets = blocks["particles"]["rlnRandomSubset"].to_numpy()
    blocks["particles"]["rlnRandomSubset"] = np.random.default_rng(0).permutation(subsets)
    shuffled = data["dir"] / "shuffled.star"
    starfile.write(blocks, shuffled, overwrite=True)
    refinement, report = _run(data, tmp_path / "out", star=shuffled)
    g = refinement.group(1)
    print(g.half_maps, g.reason)
    assert g.half_maps["verdict"] == "another split" and abs(g.half_maps["z"]) < 5
    assert not g.refined and "do not match the particles' half sets" in g.reason
    assert f"the half maps {data['half1']} and {data['half2']} do not match" in g.reason
    assert report["groups"][0]["cs_refined_mm"] == CS_NOMINAL


@pytest.mark.relion
def test_the_cryosparc_path_checks_split_0_against_map_half_a(data, tmp_path):
    """The same data as a .cs: map_half_A/B given the other way round are detected and swapped."""
    from csrefine.cryosparc import offline
    from csrefine.cryosparc.convert import cryosparc_dataset_from_relion
    from csrefine.relion.star_io import read_particle_star

    dset = cryosparc_dataset_from_relion(read_particle_star(data["star"]), data["dir"],
                                         base_dir=data["dir"])
    dset.save(tmp_path / "particles.cs")
    refinement = offline.run(tmp_path / "particles.cs", data["half2"], data["half1"],
                             tmp_path / "out", mask=data["mask"], project_dir=data["dir"],
                             options=OPTIONS)
    g = refinement.group(1)
    assert g.half_maps["verdict"] == "swapped" and abs(g.cs_refined_mm - CS_TRUE) < 0.03
    assert any("other way round" in w for w in refinement.warnings)


@pytest.mark.relion
@pytest.mark.slow
def test_after_ctf_refines_4th_order_fit_the_total_cs_is_reported_and_written(data, tmp_path):
    """relion_ctf_refine --fit_aberr puts most of the Cs error into Z4^0 (rlnEvenZernike[6]) and
    leaves rlnSphericalAberration at 2.7. csrefine reports the microscope's apparent Cs (3.0),
    says how much Z4^0 held, and writes Cs ~ 3.0 with Z4^0 = 0; relion_project of the output
    optics gives the images of the input optics plus the refined change."""
    from relion_tools import postprocess, run_relion

    d = data["dir"]
    pp = postprocess(data["half1"].name, data["mask"].name, "PostProcess/postprocess", 1.1, cwd=d)
    run_relion(["relion_ctf_refine", "--i", "particles.star", "--f", pp.relative_to(d),
                "--o", "CtfRefine/", "--fit_aberr", "--j", 2], cwd=d)
    refined_in = d / "CtfRefine/particles_ctf_refine.star"
    refinement, report = _run(data, tmp_path / "out", star=refined_in)
    g = report["groups"][0]
    print({k: g[k] for k in ("cs_nominal_mm", "cs_zernike_mm", "cs_refined_mm", "cs_sigma_mm",
                             "cs_change_z")})
    assert g["cs_nominal_mm"] == CS_NOMINAL and g["cs_zernike_mm"] > 0.1
    assert abs(g["cs_refined_mm"] - CS_TRUE) < 0.02
    out = starfile.read(tmp_path / "out/particles.star", always_dict=True)
    optics = out["optics"].iloc[0]
    assert abs(float(optics["rlnSphericalAberration"]) - CS_TRUE) < 0.02
    zernike = [float(v) for v in str(optics["rlnEvenZernike"]).strip("[]").split(",")]
    assert zernike[6] == 0.0

    # relion_project: output optics vs input optics with the refined change applied by hand
    change = g["cs_refined_mm"] - g["cs_nominal_mm"] - g["cs_zernike_mm"]
    blocks = starfile.read(refined_in, always_dict=True)
    blocks["particles"] = blocks["particles"].iloc[:40]
    blocks["optics"]["rlnSphericalAberration"] += change
    for c in ("rlnDefocusU", "rlnDefocusV"):
        blocks["particles"][c] += g["defocus_offset_A"]
    starfile.write(blocks, d / "by_hand.star", overwrite=True)
    out["particles"] = out["particles"].iloc[:40]
    starfile.write(out, d / "written.star", overwrite=True)
    images = {}
    for name in ("by_hand", "written"):
        project("map_true.mrc", f"{name}.star", f"proj_{name}", 1.1, cwd=d)
        images[name] = mrcfile.read(d / f"proj_{name}.mrcs")
    rms = float(np.sqrt(np.mean(images["by_hand"] ** 2)))
    assert np.abs(images["written"] - images["by_hand"]).max() < 1e-3 * rms


def test_a_stack_header_2_percent_off_is_a_warning_not_an_error(example_project):
    from csrefine.relion.external_job import main

    with mrcfile.open("Extract/job001/particles.mrcs", mode="r+") as m:
        m.voxel_size = 1.6 * 1.02
    assert main(["--o", "External/job004/", "--in_parts", "Refine3D/job002/run_data.star",
                 "--in_3dref", "Refine3D/job002/run_class001.mrc", "--device", "cpu"]) == 0
    report = json.loads(Path("External/job004/csrefine.json").read_text())
    assert all(g["refined"] for g in report["groups"])
    assert any("header 1.6320 Å, optics table 1.6000 Å" in w for w in report["warnings"])


def test_half_maps_with_different_header_pixel_sizes_are_refused(example_project, capsys):
    from csrefine.relion.external_job import main

    with mrcfile.open(example_project["half2"], mode="r+") as m:
        m.voxel_size = 1.7
    assert main(["--o", "External/job004/", "--in_parts", "Refine3D/job002/run_data.star",
                 "--in_3dref", "Refine3D/job002/run_class001.mrc", "--device", "cpu"]) == 2
    assert "the half maps are not a pair" in capsys.readouterr().err


def test_a_cs_that_is_right_is_reported_as_no_significant_change(example_project, capsys):
    """The example's group 2 has true Cs = nominal (2.7 mm)."""
    from csrefine.relion.external_job import main

    assert main(["--o", "External/job004/", "--in_parts", "Refine3D/job002/run_data.star",
                 "--in_3dref", "Refine3D/job002/run_class001.mrc", "--kmax_A", "3.4"]) == 0
    g1, g2 = json.loads(Path("External/job004/csrefine.json").read_text())["groups"]
    out = capsys.readouterr().out
    assert abs(g2["cs_change_z"]) < 3 and abs(g1["cs_change_z"]) > 10
    assert "No significant change" in out and "The change is significant" in out
    # the example's half maps were not reconstructed from its particles: nothing to bias
    assert g1["half_maps"]["verdict"] == "independent"
