"""--model through the real entry points: csrefine refine (RELION STAR) and the External job."""

import json
from pathlib import Path

import gemmi
import pytest

from csrefine.atomic_map import PACKAGED_MODEL
from csrefine.cli import main as cli_main
from csrefine.relion.external_job import main as job_main


@pytest.fixture()
def project(tmp_path, monkeypatch):
    from csrefine.relion.example import make_example
    info = make_example(tmp_path, n_per_group=(500, 500), model_path=PACKAGED_MODEL, seed=5, box=88)
    monkeypatch.chdir(tmp_path)
    return info


def _cli(info, model, out="out"):
    return cli_main(["refine", "--particles", str(info["star"]), "--half-maps", str(info["half1"]),
                     str(info["half2"]), "--mask", str(info["mask"]), "--out", out,
                     "--kmax-A", "3.4", "--device", "numpy", "--model", str(model)])


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
    assert "Cs" in g1["verdict"] and abs(g1["cs_at_calibrated_pixel_mm"] - 3.0) < 0.05
    assert "pixel size" not in g1["verdict"].split(":")[0]
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
            "--in_3dref", str(project["map"]), "--model", "nope.cif", "--device", "numpy"]
    assert job_main(args) != 0
    assert "nope.cif: atomic model not found" in capsys.readouterr().err
    out = Path("External/job009")
    assert (out / "RELION_JOB_EXIT_FAILURE").is_file()
    assert not (out / "csrefine.json").exists() and not (out / "particles_csrefine.star").exists()
