"""``csrefine example`` and the README's External job on it, as a new user runs them."""

import json
from pathlib import Path

import mrcfile
import pytest

from csrefine.fsc import fsc_curve, resolution_at_threshold
from csrefine.relion.example import write_example
from csrefine.relion.external_job import main

JOB = "External/job004/"


@pytest.mark.slow
def test_the_example_job_finds_its_half_maps_as_given_and_group_1s_cs(tmp_path, monkeypatch,
                                                                      capsys):
    """The example's half maps are reconstructed from its particles' half sets: the half-map
    check says "as given" for both groups and the run prints no warning; group 1 (true Cs 3.0,
    labelled 2.7) is refined well above 2.7, group 2 (true 2.7) is consistent with 2.7."""
    info = write_example(tmp_path / "demo")
    monkeypatch.chdir(info["root"])
    halves = [mrcfile.read(info[h]) for h in ("half1", "half2")]
    fsc = fsc_curve(*halves, mrcfile.read(info["mask"]))
    assert resolution_at_threshold(fsc, 96, 1.2) > 2.4  # crosses 0.143 before Nyquist
    capsys.readouterr()
    Path(JOB).mkdir(parents=True)
    assert main(["--o", JOB, "--in_parts", "Refine3D/job002/run_data.star",
                 "--in_3dref", "Refine3D/job002/run_class001.mrc",
                 "--in_mask", "MaskCreate/job003/mask.mrc", "--j", "2"]) == 0
    printed = capsys.readouterr()
    assert "WARNING" not in printed.out + printed.err
    report = json.loads(Path(JOB, "csrefine.json").read_text())
    assert report["warnings"] == []
    g1, g2 = report["groups"]
    for g in (g1, g2):
        assert g["refined"] and g["half_maps"]["verdict"] == "as given", g["half_maps"]
        assert g["half_maps"]["z"] > 10
    assert (g1["cs_refined_mm"] - 2.7) / g1["cs_sigma_mm"] > 20
    assert abs(g1["cs_refined_mm"] - 3.0) < max(4 * g1["cs_sigma_mm"], 0.03)
    assert abs(g2["cs_refined_mm"] - 2.7) < max(4 * g2["cs_sigma_mm"], 0.03)


@pytest.mark.relion
@pytest.mark.slow
def test_the_example_star_is_relions_and_relion_reads_the_jobs_output(relion, tmp_path, monkeypatch):
    """``csrefine example`` writes its particle STAR as RELION writes it (relion_star_handler:
    rows begin with spaces, RELION's precision); the External job's output of it is read by
    relion_star_handler with the refined Cs in the optics table."""
    import starfile
    from relion_tools import run_relion

    info = write_example(tmp_path / "demo")
    monkeypatch.chdir(info["root"])
    rows = Path("Refine3D/job002/run_data.star").read_text().splitlines()
    first = next(line for line in rows if "@Extract/job001/particles.mrcs" in line)
    assert first.startswith(" ") or "  " in first.strip()  # RELION's padded columns
    Path(JOB).mkdir(parents=True)
    assert main(["--o", JOB, "--in_parts", "Refine3D/job002/run_data.star",
                 "--in_3dref", "Refine3D/job002/run_class001.mrc", "--j", "2"]) == 0
    run_relion(["relion_star_handler", "--i", JOB + "particles_csrefine.star",
                "--o", "relion_read.star"])
    optics = starfile.read("relion_read.star")["optics"]
    report = json.loads(Path(JOB, "csrefine.json").read_text())
    refined = [g["cs_refined_mm"] for g in report["groups"]]
    assert list(optics["rlnSphericalAberration"]) == pytest.approx(refined, abs=1e-6)
    assert list(optics["rlnSphericalAberration"])[0] > 2.9
