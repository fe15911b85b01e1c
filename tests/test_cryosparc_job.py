"""The cryoSPARC External job against cryosparc-tools' own CryoSPARC/Job objects.

No cryoSPARC server is used: as in cryosparc-tools' tests (tests/conftest.py), only the HTTP
layer is replaced (``APIClient.__call__`` and the ``users/config/projects/jobs/assets`` endpoint
groups become mocks returning pydantic models); everything above it (CryoSPARC,
ProjectController, ExternalJobController.connect/add_output/alloc_output/save_output/log/log_plot/
run) is the real library code.
"""

from __future__ import annotations

import types
from datetime import datetime, timezone
from unittest import mock

import numpy as np
import pytest
from cryosparc.api import APIClient
from cryosparc.dataset import Dataset
from cryosparc.models.auth import Token
from cryosparc.models.job import Job
from cryosparc.models.job_spec import JobSpec, Output, OutputResult, Outputs, Params, ResourceSpec
from cryosparc.models.project import Project
from cryosparc.models.user import Email, User
from cryosparc.tools import CryoSPARC

from csrefine.atomic_map import PACKAGED_MODEL
from csrefine.cryosparc.convert import cryosparc_dataset_from_relion
from csrefine.cryosparc.job import build_parser, cryosparc_job, main
from csrefine.job import execute
from csrefine.options import options_from_namespace

CTF_FIELDS = [("ctf/type", "O"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"),
              ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
              ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"),
              ("ctf/scale", "<f4"), ("ctf/scale_const", "<f4"), ("ctf/shift_A", "<f4", (2,)),
              ("ctf/tilt_A", "<f4", (2,)), ("ctf/trefoil_A", "<f4", (2,)),
              ("ctf/tetra_A", "<f4", (4,)), ("ctf/anisomag", "<f4", (4,)), ("ctf/bfactor", "<f4")]


def _job_model(uid, type_, outputs=None, title=""):
    return Job(_id=f"6774322{uid[1:]:0>6}e66c192db762b689"[:24], uid=uid, uid_num=int(uid[1:]),
               project_uid="P3", project_uid_num=3, workspace_uids=["W2"], job_dir=uid, title=title,
               status="completed" if outputs else "building", status_num=5,
               created_by_user_id="6372a35e821ed2b71d9fe4e3",
               spec=JobSpec(type=type_, params=Params(), outputs=Outputs(outputs or {}),
                            ui_tile_width=1, ui_tile_height=1, resource_spec=ResourceSpec()),
               build_errors=[], job_dir_size_last_updated=datetime.now(timezone.utc))


def _refine_job(with_half_maps=True):
    vol = ["map", "map_half_A", "map_half_B"] if with_half_maps else ["map"]
    return _job_model("J42", "homo_refine_new", {
        "particles": Output(type="particle", title="Particles", results=[
            OutputResult(name=n, dtype=n) for n in ("blob", "ctf", "alignments3D")]),
        "volume": Output(type="volume", title="Volume", results=[
            OutputResult(name=n, dtype="blob") for n in vol])})


@pytest.fixture
def api(monkeypatch, tmp_path):
    """cryosparc-tools' HTTP layer replaced by mocks (the same seams as its own conftest)."""
    user = User(_id="6372a35e821ed2b71d9fe4e3", name="test", first_name="T", last_name="T",
                emails=[Email(address="test@example.com", verified=True)],
                roles={"__global_roles__": ["admin"]}, register_token=None,
                created_at=datetime(2017, 1, 1, tzinfo=timezone.utc))
    monkeypatch.setattr(APIClient, "__call__", mock.Mock(return_value=None))
    for name in ("users", "config", "projects", "workspaces", "jobs", "assets"):
        monkeypatch.setattr(APIClient, name, mock.MagicMock(), raising=False)
    monkeypatch.setattr(APIClient, "health", mock.Mock(return_value="OK"), raising=False)
    monkeypatch.setattr(APIClient, "login", mock.Mock(
        return_value=Token(access_token="abc123", token_type="bearer")), raising=False)
    APIClient.users.me.return_value = user
    APIClient.config.get_version.return_value = "develop"
    APIClient.projects.find_one.return_value = Project(
        _id="67292e95282b26b45d0e8fae", uid="P3", uid_num=3, title="T", project_dir=str(tmp_path),
        owner_user_id=user.id, size_last_updated=datetime.now(timezone.utc))
    APIClient.projects.get_directory.return_value = str(tmp_path)
    external = _job_model("J50", "snowflake", title="Cs refinement")
    jobs = APIClient.jobs
    sources = {"J42": _refine_job()}
    jobs.find_one.side_effect = lambda puid, juid: sources[juid]
    jobs.create.return_value = external
    for endpoint in ("add_external_input", "connect", "add_external_output", "save_output",
                     "mark_running", "mark_completed", "mark_failed"):
        getattr(jobs, endpoint).return_value = external
    jobs.add_event_log.return_value = mock.MagicMock(id="event_1")
    jobs.update_event_log.return_value = mock.MagicMock(id="event_1")
    jobs.add_image_log.return_value = mock.MagicMock(id="image_1")
    jobs.get_output_fields.return_value = CTF_FIELDS
    APIClient.assets.upload.return_value = mock.MagicMock(id="asset_1")
    return types.SimpleNamespace(jobs=jobs, sources=sources, external=external)


@pytest.fixture(scope="module")
def project_data(tmp_path_factory):
    """A small simulated project: 2 exposure groups (true Cs 3.0 / 2.7 mm, nominal 2.7)."""
    from csrefine.relion.example import make_example
    from csrefine.relion.star_io import read_particle_star

    root = tmp_path_factory.mktemp("cs_project")
    info = make_example(root, n_per_group=(300, 300), model_path=PACKAGED_MODEL, seed=4)
    particles = cryosparc_dataset_from_relion(read_particle_star(info["star"]), root, base_dir=root)
    volume = Dataset.allocate(1, [("map_half_A/path", "O"), ("map_half_A/psize_A", "<f4"),
                                  ("map_half_B/path", "O"), ("map_half_B/psize_A", "<f4")])
    volume["map_half_A/path"] = np.array([str(info["half1"].relative_to(root))], dtype=object)
    volume["map_half_B/path"] = np.array([str(info["half2"].relative_to(root))], dtype=object)
    volume["map_half_A/psize_A"] = volume["map_half_B/psize_A"] = 1.6
    return types.SimpleNamespace(root=root, particles=particles, volume=volume, info=info)


def _args(root, *extra):
    args = build_parser().parse_args(
        ["--project", "P3", "--workspace", "W2", "--particles", "J42.particles", "--volume",
         "J42.volume", "--device", "cpu", "--min-particles", "50", "--project-dir", str(root),
         *extra])
    return args, options_from_namespace(args)


def _cs():
    return CryoSPARC("https://cryosparc.example.com", email="a@b.c", password="pw", host=None,
                     base_port=None)


def _inputs(api, particles, volume):
    api.jobs.load_input.side_effect = lambda puid, juid, name, slots: {
        "particles": particles, "volume": volume}[name]


@pytest.mark.slow
def test_online_flow_saves_refined_ctf(api, project_data):
    _inputs(api, project_data.particles, project_data.volume)
    args, options = _args(project_data.root)
    made = cryosparc_job(_cs(), args, options)
    refinement = execute(made).refinement
    job = made.destination.job
    jobs = api.jobs
    jobs.create.assert_called_once_with("P3", "W2", type="snowflake", title="Cs refinement",
                                        description=mock.ANY)
    # Inputs created with their required slots, then connected to J42's outputs.
    specs = {c.args[2]: c.args[3] for c in jobs.add_external_input.call_args_list}
    assert [s.name for s in specs["particles"].slots] == ["blob", "ctf", "alignments3D"]
    assert [s.name for s in specs["volume"].slots] == ["map_half_A", "map_half_B"]
    jobs.connect.assert_any_call("P3", "J50", "particles", source_job_uid="J42",
                                 source_output_name="particles")
    jobs.connect.assert_any_call("P3", "J50", "volume", source_job_uid="J42",
                                 source_output_name="volume")
    jobs.load_input.assert_any_call("P3", "J50", "particles", slots=["blob", "ctf", "alignments3D"])
    jobs.mark_running.assert_called_once_with("P3", "J50", status="running")
    jobs.mark_completed.assert_called_once_with("P3", "J50")
    jobs.mark_failed.assert_not_called()
    # Output: passthrough particles with a new ctf slot.
    out_spec = jobs.add_external_output.call_args.args[3]
    assert jobs.add_external_output.call_args.args[2] == "particles"
    assert out_spec.passthrough == "particles" and [s.name for s in out_spec.slots] == ["ctf"]
    jobs.save_output.assert_called_once_with("P3", "J50", "particles", mock.ANY, version=0)
    saved = jobs.save_output.call_args.args[3]
    src = project_data.particles
    np.testing.assert_array_equal(saved["uid"], src["uid"])
    assert set(saved.fields()) == {"uid"} | {f[0] for f in CTF_FIELDS}
    for g in refinement.groups:
        assert g.refined
        sel = np.asarray(src["ctf/exp_group_id"]) == g.optics_group - 1
        np.testing.assert_allclose(saved["ctf/cs_mm"][sel], g.cs_refined_mm, rtol=1e-6)
        np.testing.assert_allclose(saved["ctf/df1_A"][sel],
                                   np.asarray(src["ctf/df1_A"][sel], float) + g.defocus_offset_A,
                                   atol=5e-3)
    assert abs(refinement.group(1).cs_refined_mm - 3.0) < 0.1
    assert abs(refinement.group(2).cs_refined_mm - 2.7) < 0.1
    np.testing.assert_array_equal(saved["ctf/df_angle_rad"], src["ctf/df_angle_rad"])
    assert np.all(np.asarray(src["ctf/cs_mm"]) == np.float32(2.7))  # input dataset untouched
    # Event log: progress updated in place, one summary table, plots with raw data.
    assert jobs.update_event_log.call_count >= 1
    texts = [c.args[2] for c in jobs.add_event_log.call_args_list]
    assert sum("refined" in t and "nominal" in t and "status" in t for t in texts) == 1
    assert jobs.add_image_log.call_count == 3 + len(refinement.groups)  # summary, details, FSC
    names = [c.kwargs["filename"] for c in APIClient.assets.upload.call_args_list]
    assert "Half-map FSC.png" in names and "Half-map FSC.pdf" in names and "Half-map FSC.json" in names
    assert job.uid == "J50"


@pytest.mark.slow
def test_main_reads_credentials_from_environment(api, project_data, monkeypatch, capsys):
    _inputs(api, project_data.particles, project_data.volume)
    monkeypatch.setenv("CRYOSPARC_BASE_URL", "https://cryosparc.example.com")
    monkeypatch.setenv("CRYOSPARC_EMAIL", "someone@example.com")
    monkeypatch.setenv("CRYOSPARC_PASSWORD", "s3cret-pw")
    monkeypatch.delenv("CRYOSPARC_MASTER_HOSTNAME", raising=False)
    argv = ["--project", "P3", "--workspace", "W2", "--particles", "J42.particles", "--volume",
            "J42.volume", "--device", "cpu", "--min-particles", "50", "--subsets", "2",
            "--project-dir", str(project_data.root)]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "J50" in out.out and "s3cret" not in out.out + out.err
    logged = " ".join(str(c) for c in api.jobs.add_event_log.call_args_list)
    assert "s3cret" not in logged
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv + ["--password", "x"])  # no such option


def _assert_failed_nothing_saved(api, match):
    api.jobs.mark_failed.assert_called_once()
    assert match in api.jobs.mark_failed.call_args.kwargs["error"]
    api.jobs.mark_completed.assert_not_called()
    api.jobs.save_output.assert_not_called()
    errors = [c.args[2] for c in api.jobs.add_event_log.call_args_list
              if c.kwargs.get("type") == "error"]
    assert errors and match in errors[-1]


def test_no_alignments3d_fails_job(api, project_data):
    p = project_data.particles
    bare = p.copy().filter_fields([f for f in p.fields() if not f.startswith("alignments3D/")])
    _inputs(api, bare, project_data.volume)
    with pytest.raises(Exception, match="no alignments3D"):
        execute(cryosparc_job(_cs(), *_args(project_data.root)))
    _assert_failed_nothing_saved(api, "no alignments3D")


def test_missing_blob_file_fails_job(api, project_data):
    p = project_data.particles.copy()
    p["blob/path"] = np.array(["Extract/job001/gone.mrcs"] * len(p), dtype=object)
    _inputs(api, p, project_data.volume)
    with pytest.raises(Exception, match="particle stack not found"):
        execute(cryosparc_job(_cs(), *_args(project_data.root)))
    _assert_failed_nothing_saved(api, "gone.mrcs: particle stack not found")


def test_mixed_cs_in_exposure_group_fails_job(api, project_data):
    p = project_data.particles.copy()
    cs = np.array(p["ctf/cs_mm"])
    cs[3] = 2.0
    p["ctf/cs_mm"] = cs
    _inputs(api, p, project_data.volume)
    with pytest.raises(Exception, match="not constant"):
        execute(cryosparc_job(_cs(), *_args(project_data.root)))
    _assert_failed_nothing_saved(api, "ctf/cs_mm is not constant within exposure group 0")


def test_volume_without_half_maps_fails_job(api, project_data):
    api.sources["J42"] = _refine_job(with_half_maps=False)
    _inputs(api, project_data.particles, project_data.volume)
    with pytest.raises(Exception, match="lacks map_half_A"):
        execute(cryosparc_job(_cs(), *_args(project_data.root)))
    _assert_failed_nothing_saved(api, "volume: output J42.volume lacks map_half_A, map_half_B")
    api.jobs.load_input.assert_not_called()


def test_half_map_path_leaving_project_names_volume_field(project_data):
    """A half-map path that leaves the project directory is refused in one line naming the
    volume and its field (not the particles' blob/path)."""
    from csrefine.cryosparc.job import load_job_inputs
    from csrefine.errors import InputError

    volume = project_data.volume.copy()
    volume["map_half_A/path"] = np.array(["../x.mrc"], dtype=object)
    job = types.SimpleNamespace(
        load_input=lambda name, slots: {"particles": project_data.particles, "volume": volume}[name])
    args, options = _args(project_data.root)
    with pytest.raises(InputError) as err:
        load_job_inputs(job, types.SimpleNamespace(dir=project_data.root), args, options,
                        lambda text: None)
    message = str(err.value)
    assert "\n" not in message and message.startswith("volume: map_half_A/path '../x.mrc'")
    assert "particles" not in message and "blob/path" not in message


def test_job_loader_honours_higher_order_fields(project_data):
    """load_job_inputs gives non-zero Global-CTF-Refinement fields to the core (group 0 only)
    and records the convention decision in the event log or the warnings, and in report_extra."""
    from csrefine.cryosparc.aberration_choice import REPORT_KEY
    from csrefine.cryosparc.job import load_job_inputs

    p = project_data.particles.copy()
    tilt = np.array(p["ctf/tilt_A"])
    tilt[np.asarray(p["ctf/exp_group_id"]) == 0] = [1500.0, -500.0]
    p["ctf/tilt_A"] = tilt
    logged = []
    job = types.SimpleNamespace(
        load_input=lambda name, slots: {"particles": p, "volume": project_data.volume}[name],
        log=lambda text, **kw: logged.append(text))
    args, options = _args(project_data.root)
    inputs = load_job_inputs(job, types.SimpleNamespace(dir=project_data.root), args, options,
                             logged.append)
    assert inputs.groups[1].odd_zernike.size == 6 and inputs.groups[2].odd_zernike.size == 0
    decision = inputs.report_extra[REPORT_KEY]["0"]["ctf/tilt_A"]
    assert decision["values"] == [1500.0, -500.0] and set(inputs.report_extra[REPORT_KEY]) == {"0"}
    assert any("ctf/tilt_A" in line for line in logged + inputs.warnings)


def test_queue_reconstruction_creates_and_queues_homo_reconstruct(api):
    """--queue-reconstruction: cryosparc-tools' own ProjectController.create_job and
    JobController.queue, only the HTTP layer replaced; the calls name the job type, the
    connections to the csrefine job's particles and the mask, and the lane."""
    from csrefine.cryosparc.job import RECONSTRUCT_JOB_TYPE, queue_reconstruction

    rec = _job_model("J51", RECONSTRUCT_JOB_TYPE, title="reconstruction")
    jobs = api.jobs
    jobs.create.return_value = rec
    jobs.connect.return_value = rec
    jobs.enqueue.return_value = rec
    project = _cs().find_project("P3")
    job = queue_reconstruction(project, "W2", "J50", mask="J43.mask", lane="gpu-lane")
    jobs.create.assert_called_once_with("P3", "W2", params={}, type="homo_reconstruct",
                                        title=mock.ANY, description=mock.ANY)
    assert jobs.connect.call_args_list == [
        mock.call("P3", "J51", "particles", source_job_uid="J50", source_output_name="particles"),
        mock.call("P3", "J51", "mask", source_job_uid="J43", source_output_name="mask")]
    jobs.enqueue.assert_called_once_with("P3", "J51", lane="gpu-lane", hostname=None, gpus=[])
    assert job.uid == "J51"


def test_queue_reconstruction_without_mask_or_lane(api):
    from csrefine.cryosparc.job import queue_reconstruction

    rec = _job_model("J51", "homo_reconstruct")
    api.jobs.create.return_value = api.jobs.connect.return_value = rec
    api.jobs.enqueue.return_value = rec
    queue_reconstruction(_cs().find_project("P3"), "W2", "J50")
    api.jobs.connect.assert_called_once_with("P3", "J51", "particles", source_job_uid="J50",
                                             source_output_name="particles")
    api.jobs.enqueue.assert_called_once_with("P3", "J51", lane=None, hostname=None, gpus=[])


def test_rounds_are_not_offered(api, monkeypatch, capsys):
    """--rounds cannot run inside cryoSPARC (its reconstruction is a separate queued job, see
    --queue-reconstruction): the option is not in --help, and given anyway it is one line, exit
    2, no job created."""
    monkeypatch.setenv("CRYOSPARC_BASE_URL", "https://cryosparc.example.com")
    assert "--rounds" not in build_parser().format_help()
    argv = ["--project", "P3", "--workspace", "W2", "--particles", "J42.particles", "--volume",
            "J42.volume", "--rounds", "2"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --rounds 2" in err and len(err.strip().splitlines()) == 1
    api.jobs.create.assert_not_called()
