"""The RELION External-job protocol, run as RELION runs it (working directory = project)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from csrefine.relion.external_job import main

JOB = "External/job004/"


def _args(info, *extra):
    Path(JOB).mkdir(parents=True, exist_ok=True)  # RELION's pipeliner makes the job directory
    return ["--o", JOB, "--in_parts", "Refine3D/job002/run_data.star",
            "--in_3dref", "Refine3D/job002/run_class001.mrc", "--in_mask", "MaskCreate/job003/mask.mrc",
            "--kmax_A", "3.4", "--device", "cpu", *extra, "--j", "1"]


def _snapshot(root: Path):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "External" not in p.parts}


def test_success_writes_outputs_and_recovers_cs(example_project):
    before = _snapshot(example_project["root"])
    assert main(_args(example_project)) == 0
    out = Path(JOB)
    for name in ("particles_csrefine.star", "logfile.pdf", "csrefine.json",
                 "RELION_OUTPUT_NODES.star", "RELION_JOB_EXIT_SUCCESS"):
        assert (out / name).is_file(), name
    report = json.loads((out / "csrefine.json").read_text())
    for g, truth in zip(report["groups"], example_project["cs_true_mm"]):
        for key in ("optics_group", "n_particles", "cs_nominal_mm", "cs_refined_mm", "cs_sigma_mm",
                    "cs_subsets_mm", "defocus_offset_A", "pixel_size_A",
                    "pixel_size_if_cs_nominal_A", "resolution_impact_A", "band_A"):
            assert key in g
        assert g["refined"]
        assert abs(g["cs_refined_mm"] - truth) < max(4 * g["cs_sigma_mm"], 0.03)
        assert len(g["cs_subsets_mm"]) == 3
    star = starfile.read(out / "particles_csrefine.star", always_dict=True)
    assert np.allclose(star["optics"]["rlnSphericalAberration"],
                       [g["cs_refined_mm"] for g in report["groups"]], atol=1e-6)
    nodes = starfile.read(out / "RELION_OUTPUT_NODES.star", always_dict=True)["output_nodes"]
    assert f"{JOB}particles_csrefine.star" in nodes["rlnPipeLineNodeName"].tolist()
    assert set(nodes["rlnPipeLineNodeType"]) == {3, 13}
    assert "ParticleGroupMetadata.star.relion" in nodes["rlnPipeLineNodeTypeLabel"].tolist()
    assert _snapshot(example_project["root"]) == before  # inputs untouched


def test_half_maps_from_a_postprocess_star(example_project):
    pp = Path("PostProcess/job005")
    pp.mkdir(parents=True)
    starfile.write({"general": {"rlnUnfilteredMapHalf1": str(example_project["half1"]),
                                "rlnUnfilteredMapHalf2": str(example_project["half2"]),
                                "rlnMaskName": str(example_project["mask"])}},
                   pp / "postprocess.star")
    args = ["--o", JOB, "--in_parts", "Refine3D/job002/run_data.star",
            "--in_3dref", str(pp / "postprocess.star"), "--kmax_A", "3.4", "--device", "cpu"]
    assert main(args) == 0
    assert json.loads(Path(JOB, "csrefine.json").read_text())["inputs"]["mask"].endswith("mask.mrc")


def test_half_maps_from_the_postprocess_star_relion_wrote(example_project, relion):
    """data_general of relion_postprocess's own STAR names the half maps and the mask."""
    from relion_tools import postprocess

    from csrefine.relion.refs import resolve_half_maps

    half1 = Path(example_project["half1"]).relative_to(Path.cwd())
    mask = Path(example_project["mask"]).relative_to(Path.cwd())
    star = postprocess(half1, mask, "PostProcess/job006/postprocess", 1.6, randomize_at_A=10.0)
    h1, h2, found_mask = resolve_half_maps(str(star))
    assert (Path(h1), Path(h2), Path(found_mask)) == (
        half1, Path(str(half1).replace("half1", "half2")), mask)


@pytest.mark.parametrize("text, expected", [
    ("data_general\n\n_rlnUnfilteredMapHalf1   'Refine3D/my job/h1.mrc'\n"
     "_rlnUnfilteredMapHalf2 Refine3D/h2.mrc # a comment\n_rlnMaskName\tmask.mrc\n"
     "\ndata_fsc\n\nloop_\n_rlnResolution #1\n0.1\n\n",
     ("Refine3D/my job/h1.mrc", "Refine3D/h2.mrc", "mask.mrc")),
    ("data_general\n_rlnUnfilteredMapHalf1 a.mrc\n_rlnUnfilteredMapHalf2 b.mrc\n",
     ("a.mrc", "b.mrc", None)),
])
def test_postprocess_general_block_as_relion_reads_it(tmp_path, text, expected):
    from csrefine.relion.refs import from_postprocess

    star = tmp_path / "postprocess.star"
    star.write_text(text)
    assert from_postprocess(str(star)) == expected


@pytest.mark.parametrize("text, message", [
    ("data_fsc\nloop_\n_rlnResolution #1\n0.1\n", "no data_general block"),
    ("data_general\n_rlnUnfilteredMapHalf1 a.mrc\n", "lacks _rlnUnfilteredMapHalf1/2"),
    ("data_general\n_rlnUnfilteredMapHalf1 \"a b.mrc\n", "line 2"),
    ("\x00\x01binary", "no data_general block"),
])
def test_a_postprocess_star_without_half_maps_is_one_line(tmp_path, text, message):
    from csrefine.errors import InputError
    from csrefine.relion.refs import from_postprocess

    star = tmp_path / "postprocess.star"
    star.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        from_postprocess(str(star))
    assert str(star) in str(info.value) and "\n" not in str(info.value)


def _assert_failed_cleanly(capsys, code, text):
    assert code != 0
    err = capsys.readouterr().err
    assert text in err
    assert len(err.strip().splitlines()) == 1, err
    out = Path(JOB)
    assert (out / "RELION_JOB_EXIT_FAILURE").is_file()
    for name in ("particles_csrefine.star", "csrefine.json", "logfile.pdf", "RELION_JOB_EXIT_SUCCESS"):
        assert not (out / name).exists()


def _edit_star(fn):
    path = Path("Refine3D/job002/run_data.star")
    blocks = starfile.read(path, always_dict=True)
    fn(blocks)
    starfile.write(blocks, path, overwrite=True)


def test_missing_stack_is_named(example_project, capsys):
    Path("Extract/job001/particles.mrcs").rename("elsewhere.mrcs")
    _assert_failed_cleanly(capsys, main(_args(example_project)), "particles.mrcs: particle stack not found")


def test_short_stack_is_named(example_project, capsys):
    path = Path("Extract/job001/particles.mrcs")
    data = mrcfile.read(path)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data[:100])
    _assert_failed_cleanly(capsys, main(_args(example_project)), "the stack holds 100")


def test_nan_in_images_is_named(example_project, capsys):
    path = Path("Extract/job001/particles.mrcs")
    with mrcfile.open(path, mode="r+") as m:
        m.data[5, 3, 3] = np.nan
    _assert_failed_cleanly(capsys, main(_args(example_project)), "image 6 contains NaN")


def test_nan_in_metadata_is_named(example_project, capsys):
    def bad(blocks):
        blocks["particles"].loc[7, "rlnAngleRot"] = np.nan
    _edit_star(bad)
    _assert_failed_cleanly(capsys, main(_args(example_project)), "rlnAngleRot")


def test_box_mismatch_is_named(example_project, capsys):
    def bad(blocks):
        blocks["optics"]["rlnImageSize"] = 96
    _edit_star(bad)
    _assert_failed_cleanly(capsys, main(_args(example_project)), "96")


def test_pixel_size_mismatch_with_half_maps_is_named(example_project, capsys):
    for h in ("half1", "half2"):
        with mrcfile.open(example_project[h], mode="r+") as m:
            m.voxel_size = 1.7
    _assert_failed_cleanly(capsys, main(_args(example_project)), "pixel size")


def test_missing_pose_column_is_named(example_project, capsys):
    _edit_star(lambda b: b["particles"].pop("rlnAnglePsi"))
    _assert_failed_cleanly(capsys, main(_args(example_project)), "_rlnAnglePsi")


def test_star_without_optics_table_fails(example_project, capsys):
    _edit_star(lambda b: b.pop("optics"))
    _assert_failed_cleanly(capsys, main(_args(example_project)), "no data_optics table")


def test_small_group_keeps_nominal_cs_and_others_proceed(example_project):
    def shrink(blocks):
        p = blocks["particles"]
        keep = (p["rlnOpticsGroup"] == 1) | (np.arange(len(p)) < 620)
        blocks["particles"] = p[keep].reset_index(drop=True)
    _edit_star(shrink)  # group 2 keeps 20 particles
    assert main(_args(example_project)) == 0
    report = json.loads(Path(JOB, "csrefine.json").read_text())
    g1, g2 = report["groups"]
    assert g1["refined"] and not g2["refined"] and "too few particles" in g2["reason"]
    assert g2["cs_refined_mm"] == g2["cs_nominal_mm"] == 2.7
    star = starfile.read(Path(JOB, "particles_csrefine.star"), always_dict=True)
    assert star["optics"]["rlnSphericalAberration"].tolist()[1] == 2.7


def test_unknown_parameter_is_refused(example_project, capsys):
    _assert_failed_cleanly(capsys, main(_args(example_project, "--kmni_A", "15")), "--kmni_A")


def test_abort_stops_and_leaves_no_outputs(example_project):
    """RELION's abort: RELION_JOB_ABORT_NOW appears while running."""
    cmd = [sys.executable, "-m", "csrefine.relion.external_job",
           *_args(example_project, "--batch_size", "16")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = Path(JOB)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until it is accumulating
        if proc.poll() is not None:
            break
        line = proc.stdout.readline()
        if "particles/s" in line:
            break
    (out / "RELION_JOB_ABORT_NOW").touch()
    t0 = time.monotonic()
    proc.wait(timeout=60)
    assert time.monotonic() - t0 < 10
    assert proc.returncode != 0
    assert (out / "RELION_JOB_EXIT_ABORTED").is_file()
    assert not (out / "RELION_JOB_ABORT_NOW").exists()
    for name in ("particles_csrefine.star", "csrefine.json", "logfile.pdf", "RELION_JOB_EXIT_SUCCESS"):
        assert not (out / name).exists()


def test_group_without_signal_keeps_nominal_cs_and_others_proceed(example_project):
    """A group whose images carry no usable high-resolution signal (here: pure noise) is marked
    not refined, keeps its nominal Cs, and the other group is refined."""
    path = Path("Extract/job001/particles.mrcs")
    with mrcfile.open(path, mode="r+") as m:
        m.data[600:] = np.random.default_rng(0).normal(0, 1, m.data[600:].shape).astype(np.float32)
    assert main(_args(example_project)) == 0
    g1, g2 = json.loads(Path(JOB, "csrefine.json").read_text())["groups"]
    assert g1["refined"] and abs(g1["cs_refined_mm"] - 3.0) < 0.05
    assert not g2["refined"] and "too uncertain" in g2["reason"]
    assert g2["cs_refined_mm"] == 2.7 and g2["defocus_offset_A"] == 0.0
    star = starfile.read(Path(JOB, "particles_csrefine.star"), always_dict=True)
    assert star["optics"]["rlnSphericalAberration"].tolist() == [
        pytest.approx(g1["cs_refined_mm"], abs=1e-6), 2.7]
