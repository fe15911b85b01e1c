"""--model through the real entry points: csrefine refine (RELION STAR), the External job, and
the RELION and cryoSPARC runs on data made with RELION itself."""

import json
from pathlib import Path

import gemmi
import pytest
from relion_tools import simulate_dataset

from csrefine.atomic_map import PACKAGED_MODEL, docked_structure
from csrefine.cli import main as cli_main
from csrefine.options import RefineOptions
from csrefine.relion.external_job import main as job_main

PIXEL_A, CS_TRUE, CS_NOMINAL = 1.1, 3.0, 2.7


@pytest.fixture()
def project(tmp_path, monkeypatch):
    from csrefine.relion.example import make_example
    info = make_example(tmp_path, n_per_group=(500, 500), model_path=PACKAGED_MODEL, seed=5, box=88)
    monkeypatch.chdir(tmp_path)
    return info


def _cli(info, model, out="out"):
    return cli_main(["refine", "--particles", str(info["star"]), "--half-maps", str(info["half1"]),
                     str(info["half2"]), "--mask", str(info["mask"]), "--out", out,
                     "--kmax-A", "3.4", "--device", "cpu", "--model", str(model)])


@pytest.mark.slow
def test_docked_model_calibrates_pixel_size_and_gives_a_verdict(project, capsys):
    assert _cli(project, project["model"]) == 0
    out = capsys.readouterr().out
    assert "pixel-size calibration: scan step 41 of 41" in out  # progress during the scan
    assert "only an absolute ruler" not in out and "neither:" not in out  # a model was given
    report = json.loads(Path("out/csrefine.json").read_text())
    assert abs(report["pixel_size_calibrated_A"] / 1.6 - 1) < 0.002
    assert report["pixel_size_sigma_A"] > 0
    g1, g2 = report["groups"]
    assert g1["kind"] == "Cs" and abs(g1["cs_at_calibrated_pixel_mm"] - 3.0) < 0.05
    assert "the change is in Cs" in g1["verdict"]
    assert "verdict" not in report  # one place per fact: the group's entry
    assert "cs_at_calibrated_pixel_sigma_mm" in g1 and "groups" not in report["pixel_calibration"]
    assert report["timings_s"]["calibration"] > 0
    print(g1["verdict"], "|", g2["verdict"])


@pytest.mark.slow
def test_undocked_model_gets_no_calibration_but_the_refinement_stands(project, tmp_path, capsys):
    st = gemmi.read_structure(str(project["model"]))
    st.setup_entities()
    tr = gemmi.Transform(gemmi.Mat33([[0, -1, 0], [1, 0, 0], [0, 0, 1]]), gemmi.Vec3(0, 0, 0))
    centre = gemmi.Position(*(44 * 1.6,) * 3)
    for m in st:
        for ch in m:
            for res in ch:
                for atom in res:
                    p = atom.pos - centre
                    atom.pos = gemmi.Position(*tr.apply(p).tolist()) + centre
    rotated = tmp_path / "rotated.cif"
    st.make_mmcif_document().write_file(str(rotated))
    assert _cli(project, rotated) == 0
    report = json.loads(Path("out/csrefine.json").read_text())
    assert "pixel_size_calibrated_A" not in report
    assert "not docked" in report["pixel_calibration_error"] or "model" in report["pixel_calibration_error"]
    assert report["groups"][0]["refined"]
    assert "calibration NOT done" in capsys.readouterr().out


def test_missing_model_fails_before_writing(project, capsys):
    args = ["--o", "External/job009/", "--in_parts", str(project["star"]),
            "--in_3dref", str(project["map"]), "--model", "nope.cif", "--device", "cpu"]
    assert job_main(args) != 0
    assert "nope.cif: atomic model not found" in capsys.readouterr().err
    out = Path("External/job009")
    assert (out / "RELION_JOB_EXIT_FAILURE").is_file()
    assert not (out / "csrefine.json").exists() and not (out / "particles_csrefine.star").exists()


@pytest.fixture(scope="module")
def cs_error_data(tmp_path_factory, structure, relion):
    """A Cs error with the pixel size right, as a facility's data have it: relion_project images
    with the true Cs 3.0 mm, the STAR labelled 2.7 (box 128, 1.1 A, 5,000 particles), the half
    maps reconstructed by relion_reconstruct from the nominal STAR (so they carry the nominal
    CTF), 1BD2 docked where the map was built."""
    d = tmp_path_factory.mktemp("cs_error")
    info = simulate_dataset(d, structure, n=5000, cs_true_mm=CS_TRUE, cs_nominal_mm=CS_NOMINAL,
                            box=128, pixel_nominal_A=PIXEL_A, seed=9)
    info["model"] = d / "model_docked.cif"
    docked_structure(structure, 128, PIXEL_A).make_mmcif_document().write_file(str(info["model"]))
    return info


def _assert_called_cs(report: dict, lines: list) -> None:
    """Within 0.1% of the true pixel size, the verdict Cs, no call for a ruler."""
    p_cal, sigma = report["pixel_size_calibrated_A"], report["pixel_size_sigma_A"]
    g = report["groups"][0]
    print(f"calibrated {p_cal:.5f} ± {sigma:.5f} A; {g['verdict']}")
    assert abs(p_cal / PIXEL_A - 1) < 0.001 and 0 < sigma < 0.001 * PIXEL_A
    assert g["kind"] == "Cs"
    assert "confirms the pixel size" in g["verdict"] and "the change is in Cs" in g["verdict"]
    assert abs(g["cs_at_calibrated_pixel_mm"] - CS_TRUE) < 0.03
    assert not any("only an absolute ruler" in line for line in lines)


@pytest.mark.relion
@pytest.mark.slow
@pytest.mark.parametrize("rounds", [1, 2])
def test_a_cs_error_is_called_cs_with_maps_of_the_nominal_cs_and_rebuilt(cs_error_data, tmp_path,
                                                                          rounds):
    """Round 1 calibrates against the given maps (the nominal CTF, the FSC at ~2.66 A: a cropped
    grid of 120 in a 128 cube); --rounds 2 against maps rebuilt with the refined Cs."""
    from csrefine.relion.run import run

    lines = []
    run(cs_error_data["star"], cs_error_data["half1"], cs_error_data["half2"], tmp_path / "out",
        model=cs_error_data["model"], options=RefineOptions(threads=2, rounds=rounds),
        base_dir=cs_error_data["dir"], progress=lines.append)
    report = json.loads((tmp_path / "out" / "csrefine.json").read_text())
    assert len(report.get("rounds", [None])) == rounds
    _assert_called_cs(report, lines)


@pytest.mark.relion
@pytest.mark.slow
def test_the_cryosparc_path_calibrates_the_cs_error_the_same(cs_error_data, tmp_path):
    """The same particles as a .cs through the cryoSPARC path's run: the same core calibration."""
    from csrefine.cryosparc import offline
    from csrefine.cryosparc.convert import cryosparc_dataset_from_relion
    from csrefine.relion.star_io import read_particle_star

    d = cs_error_data["dir"]
    dset = cryosparc_dataset_from_relion(read_particle_star(cs_error_data["star"]), d, base_dir=d)
    dset.save(tmp_path / "particles.cs")
    lines = []
    offline.run(tmp_path / "particles.cs", cs_error_data["half1"], cs_error_data["half2"],
                tmp_path / "out", model=cs_error_data["model"], project_dir=d,
                options=RefineOptions(threads=2), progress=lines.append)
    _assert_called_cs(json.loads((tmp_path / "out" / "csrefine.json").read_text()), lines)
