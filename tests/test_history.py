"""The per-instrument Cs history (csrefine.history): the database on SQLite and on a real
PostgreSQL server (``$CSREFINE_TEST_POSTGRES_URL``, which .ci/run sets after starting Debian's
postgresql; skipped loudly, with the reason, where none is reachable), the statistics on
constructed numbers, ``history show --json`` and ``history plot``, and the entry points'
recording (opt-in; an unusable database only warns)."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import sqlalchemy as sa

from csrefine import cli
from csrefine.history import record_if_requested
from csrefine.history.db import (
    SCHEMA_VERSION,
    HistoryError,
    RunLabels,
    content_hash,
    load_groups,
    open_engine,
    record_report,
    runs_table,
    schema_version_table,
)
from csrefine.history.stats import deviations_sigma, outlier_flags, weighted_mean
from csrefine.history.summary import build_panels

POSTGRES_ENV = "CSREFINE_TEST_POSTGRES_URL"
#: Nothing listens on port 1: a connection is refused at once.
UNREACHABLE_URL = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"
WORKERS, RECORDS_PER_WORKER, SHARED_RECORDS = 2, 20, 5


def count_runs(engine) -> int:
    """Number of recorded runs."""
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(runs_table)).scalar())


# ------------------------------------------------------------------------------ data
def make_report(cs_mm, sigma_mm=0.01, *, tag="", pixel_size_A=1.6, voltage_kv=300.0,
                calibrated_A=None, calibrated_sigma_A=None, map_pixel_size_A=None) -> dict:
    """A csrefine.json content with one refined optics group per value of ``cs_mm``; the map's
    pixel size (default: the groups') is calibrated to ``calibrated_A``."""
    map_pixel_size_A = map_pixel_size_A or pixel_size_A
    values = np.atleast_1d(cs_mm)
    groups = []
    for i, cs in enumerate(values, start=1):
        g = {"optics_group": i, "name": f"opticsGroup{i}", "n_particles": 1000, "refined": True,
             "reason": "refined", "cs_nominal_mm": 2.7, "cs_refined_mm": float(cs),
             "cs_sigma_mm": sigma_mm, "cs_subsets_mm": [float(cs)] * 3, "defocus_offset_A": 1.0,
             "pixel_size_A": pixel_size_A,
             "pixel_size_if_cs_nominal_A": pixel_size_A * (2.7 / cs) ** 0.25 if cs > 0 else None,
             "voltage_kv": voltage_kv}
        if calibrated_A is not None:
            g["cs_at_calibrated_pixel_mm"] = float(cs) * (calibrated_A / map_pixel_size_A) ** 4
            g["verdict"] = "pixel size"
        groups.append(g)
    report = {"csrefine_version": "0.1.0", "inputs": {"particles": f"P{tag}.star"},
              "groups": groups, "timings_s": {"wall": 1.0}, "tag": tag}
    if calibrated_A is not None:
        report.update(pixel_size_calibrated_A=calibrated_A, pixel_size_sigma_A=calibrated_sigma_A,
                      map_pixel_size_A=map_pixel_size_A)
    return report


# ------------------------------------------------------------------------------ databases
def _postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        reason = (f"POSTGRESQL NOT AVAILABLE: ${POSTGRES_ENV} is not set (.ci/run starts Debian's "
                  f"postgresql and sets it); the PostgreSQL history tests were SKIPPED, not passed")
    else:
        import sqlalchemy as sa
        try:
            engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
            with engine.begin() as connection:  # a clean database for each test
                for table in ("groups", "runs", "schema_version"):
                    connection.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
            engine.dispose()
            return url
        except Exception as exc:
            reason = (f"POSTGRESQL NOT REACHABLE at ${POSTGRES_ENV} ({exc.__class__.__name__}: "
                      f"{str(exc).splitlines()[0]}); the PostgreSQL history tests were SKIPPED")
    warnings.warn(reason, stacklevel=1)
    print(f"\n{'#' * 78}\n{reason}\n{'#' * 78}")
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty history database: a SQLite file, or the test PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite'}"
    return _postgres_url()


@pytest.fixture()
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'history.sqlite'}"


# ------------------------------------------------------------------------------ recording
def test_record_and_load(db_url):
    engine = open_engine(db_url)
    report = make_report([3.0, 2.72], tag="a", calibrated_A=1.56, calibrated_sigma_A=0.002)
    assert record_report(engine, report, RunLabels("Krios-2", "105kx", source="/data/a"))
    records = load_groups(engine)
    assert [r.optics_group for r in records] == [1, 2]
    first = records[0]
    assert (first.instrument, first.magnification, first.voltage_kv) == ("Krios-2", "105kx", 300.0)
    assert first.cs_refined_mm == 3.0 and first.cs_sigma_mm == 0.01 and first.refined
    assert first.pixel_size_calibrated_A == 1.56 and first.verdict == "pixel size"
    assert first.cs_at_calibrated_pixel_mm == pytest.approx(3.0 * (1.56 / 1.6) ** 4)
    assert first.content_hash == content_hash(report)
    assert load_groups(engine, "other") == []
    with engine.connect() as connection:
        import sqlalchemy as sa
        assert connection.execute(sa.select(schema_version_table.c.version)).scalars().all() == [
            *range(1, SCHEMA_VERSION + 1)]
    engine.dispose()


def test_calibrated_cs_of_a_group_at_another_pixel_size_than_the_map(sqlite_url):
    """A group of 1.2 Å pixels refined against a map of 1.0 Å calibrated to 1.02 ± 0.001 Å:
    its Cs at the calibrated pixel size scales with (1.02 / 1.0)^4, its sigma likewise, and its
    calibrated pixel size is 1.224 Å (2% larger than nominal)."""
    engine = open_engine(sqlite_url)
    record_report(engine, make_report(3.0, pixel_size_A=1.2, map_pixel_size_A=1.0,
                                      calibrated_A=1.02, calibrated_sigma_A=0.001), RunLabels("K"))
    d = build_panels(load_groups(engine))[0].datasets[0]
    engine.dispose()
    ratio4 = 1.02**4
    assert d.cs_at_calibrated_pixel_sigma_mm == pytest.approx(
        math.hypot(0.01 * ratio4, 4 * 3.0 * ratio4 * 0.001 / 1.02), rel=1e-6)
    assert d.pixel_size_calibrated_A == pytest.approx(1.224, rel=1e-6)


def test_calibrated_cs_of_a_group_whose_cs_is_zero(sqlite_url):
    """A Cs-corrected instrument: a refined Cs of 0 mm still gets its calibrated pixel size and
    the sigma of Cs there (the ratio comes from the pixel sizes, not from the Cs values)."""
    engine = open_engine(sqlite_url)
    record_report(engine, make_report(0.0, pixel_size_A=1.0, calibrated_A=1.02,
                                      calibrated_sigma_A=0.001), RunLabels("K"))
    d = build_panels(load_groups(engine))[0].datasets[0]
    engine.dispose()
    assert d.pixel_size_calibrated_A == pytest.approx(1.02, rel=1e-12)
    assert d.cs_at_calibrated_pixel_sigma_mm == pytest.approx(0.01 * 1.02**4, rel=1e-12)


def test_a_version_1_database_is_migrated_and_its_runs_still_read(sqlite_url):
    """A database written before runs carried the map's pixel size: opening it adds the column
    (schema version 2), its runs read back with none (the group's pixel size stands in for the
    map's), and new runs record it."""
    engine = open_engine(sqlite_url)
    record_report(engine, make_report(3.0, tag="old", calibrated_A=1.632, calibrated_sigma_A=0.001),
                  RunLabels("K"))
    with engine.begin() as connection:  # back to version 1's tables
        connection.execute(sa.text('ALTER TABLE runs DROP COLUMN "map_pixel_size_A"'))
        connection.execute(sa.delete(schema_version_table).where(schema_version_table.c.version > 1))
    engine.dispose()
    engine = open_engine(sqlite_url)
    record_report(engine, make_report(3.0, tag="new", pixel_size_A=1.2, map_pixel_size_A=1.0,
                                      calibrated_A=1.02, calibrated_sigma_A=0.001), RunLabels("K"))
    old, new = load_groups(engine)
    with engine.connect() as connection:
        versions = connection.execute(sa.select(schema_version_table.c.version)).scalars().all()
    engine.dispose()
    assert sorted(versions) == [1, 2] and (old.map_pixel_size_A, new.map_pixel_size_A) == (None, 1.0)
    datasets = build_panels([old, new])[0].datasets
    assert [d.pixel_size_calibrated_A for d in datasets] == pytest.approx([1.632, 1.224])


def test_recording_the_same_result_twice_is_a_no_op(db_url, tmp_path):
    report = make_report(2.75, tag="b")
    assert record_if_requested(report, instrument="Krios-2", history_db=db_url) is True
    assert record_if_requested(report, instrument="Krios-2", history_db=db_url) is False
    # the same result read back from its csrefine.json (another date, another path): still one run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "csrefine.json").write_text(json.dumps(report, indent=2))
    assert record_if_requested(tmp_path / "run", instrument="Krios-2", history_db=db_url) is False
    engine = open_engine(db_url)
    assert count_runs(engine) == 1 and len(load_groups(engine)) == 1
    engine.dispose()


def _recorder(url, worker, barrier, queue):
    """One concurrent recorder: its own reports and the shared ones, as fast as it can."""
    barrier.wait()
    outcomes = []
    for i in range(RECORDS_PER_WORKER):
        outcomes.append(("own", record_if_requested(make_report(2.7 + 0.001 * i, tag=f"w{worker}-{i}"),
                                                    instrument="Krios-2", history_db=url)))
        if i < SHARED_RECORDS:
            outcomes.append(("shared", record_if_requested(make_report(2.8, tag=f"shared-{i}"),
                                                           instrument="Krios-2", history_db=url)))
    queue.put(outcomes)


def test_two_concurrent_recorders_lose_nothing(db_url):
    """Two processes, each recording 20 results of its own and the same 5 shared ones, start
    together on an empty database (schema creation races too): every own result is recorded,
    each shared one exactly once, and nothing fails."""
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(WORKERS), context.Queue()
    workers = [context.Process(target=_recorder, args=(db_url, w, barrier, queue))
               for w in range(WORKERS)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    own = [new for r in results for kind, new in r if kind == "own"]
    shared = [new for r in results for kind, new in r if kind == "shared"]
    assert own == [True] * (WORKERS * RECORDS_PER_WORKER)
    assert None not in shared and shared.count(True) == SHARED_RECORDS
    engine = open_engine(db_url)
    assert count_runs(engine) == WORKERS * RECORDS_PER_WORKER + SHARED_RECORDS
    engine.dispose()


@pytest.mark.parametrize("url", [UNREACHABLE_URL, "sqlite:////nonexistent-dir/sub/history.sqlite"])
def test_an_unreachable_database_is_a_warning(url):
    said = []
    assert record_if_requested(make_report(2.7), instrument="Krios-2", history_db=url,
                               warn=said.append) is None
    assert len(said) == 1 and "not recorded" in said[0] and "secret" not in said[0]
    with pytest.raises(HistoryError):
        open_engine(url)


def test_recording_is_opt_in(sqlite_url, monkeypatch):
    monkeypatch.delenv("CSREFINE_INSTRUMENT", raising=False)
    assert record_if_requested(make_report(2.7), history_db=sqlite_url) is None
    monkeypatch.setenv("CSREFINE_INSTRUMENT", "Glacios")
    assert record_if_requested(make_report(2.7), history_db=sqlite_url) is True
    engine = open_engine(sqlite_url)
    assert [r.instrument for r in load_groups(engine)] == ["Glacios"]
    engine.dispose()


def test_a_newer_schema_is_refused(sqlite_url):
    import sqlalchemy as sa
    engine = open_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(sa.insert(schema_version_table).values(version=SCHEMA_VERSION + 1))
    engine.dispose()
    with pytest.raises(HistoryError, match="newer"):
        open_engine(sqlite_url)


# ------------------------------------------------------------------------------ entry points
def _fake_refinement(monkeypatch, cs_mm):
    """Every entry point's run returns a constructed report (no images needed); the job shell
    around it (destination, history, exit status) is the real one."""
    import csrefine.job

    def fake_run(load, options, destination, should_abort=None, reconstruct=None):
        return SimpleNamespace(report=make_report(cs_mm, tag=str(destination.history_source)))

    monkeypatch.setattr(csrefine.job, "run_refinement", fake_run)


class _FakeAdapter:
    PARTICLE_SUFFIXES = (".star",)

    def refine_job(self, args, options):
        from csrefine.job import Job
        from csrefine.outputs import OutputDirectory

        return Job(options, lambda: None, OutputDirectory(args.out, "p.star", None))

    def add_commands(self, subparsers):
        return {}


def _refine_argv(out, *extra):
    return ["refine", "--particles", "p.star", "--half-maps", "h1.mrc", "h2.mrc", "--out", str(out),
            *extra]


def test_cli_refine_records_and_an_unreachable_database_only_warns(tmp_path, sqlite_url,
                                                                   monkeypatch, capsys):
    _fake_refinement(monkeypatch, 2.76)
    monkeypatch.setattr(cli, "load_adapters", lambda: {"fake": _FakeAdapter()})
    assert cli.main(_refine_argv(tmp_path / "a", "--instrument", "Krios-2", "--magnification",
                                 "105kx", "--history-db", sqlite_url)) == 0
    assert cli.main(_refine_argv(tmp_path / "b", "--instrument", "Krios-2",
                                 "--history-db", UNREACHABLE_URL)) == 0
    assert "WARNING: csrefine history: the run was not recorded" in capsys.readouterr().out
    engine = open_engine(sqlite_url)
    (record,) = load_groups(engine)
    assert (record.instrument, record.magnification) == ("Krios-2", "105kx")
    assert record.source == str((tmp_path / "a").resolve())
    engine.dispose()


def test_relion_external_job_records_and_warns(tmp_path, sqlite_url, monkeypatch, capsys):
    from csrefine.relion import external_job

    _fake_refinement(monkeypatch, 2.74)
    monkeypatch.chdir(tmp_path)
    for name in ("r.mrc", "r_half1_class001_unfil.mrc", "r_half2_class001_unfil.mrc"):
        (tmp_path / name).write_bytes(b"")
    base = ["--in_parts", "p.star", "--in_3dref", "r_class001.mrc", "--j", "1"]
    (tmp_path / "r_class001.mrc").write_bytes(b"")
    assert external_job.main(["--o", "External/job004/", *base, "--instrument", "Krios-2",
                              "--magnification", "--history_db", sqlite_url]) == 0
    assert external_job.main(["--o", "External/job005/", *base, "--instrument", "Krios-2",
                              "--history_db", UNREACHABLE_URL]) == 0
    assert (tmp_path / "External/job005/RELION_JOB_EXIT_SUCCESS").is_file()
    assert "the run was not recorded" in capsys.readouterr().out  # run.out
    engine = open_engine(sqlite_url)
    assert [(r.instrument, r.magnification) for r in load_groups(engine)] == [("Krios-2", None)]
    engine.dispose()


def test_cryosparc_job_records_its_report(sqlite_url, monkeypatch):
    from csrefine.cryosparc import job as cs_job

    _fake_refinement(monkeypatch, 2.9)

    class FakeJobDestination:
        job = SimpleNamespace(project_uid="P3", uid="J99")
        history_source = "cryoSPARC P3-J99"

        def __init__(self, cs, args):
            pass

        def open(self):
            pass

        def close(self, error):
            pass

        def progress(self, text):
            print(text)

    monkeypatch.setattr(cs_job, "connect", lambda url: object())
    monkeypatch.setattr(cs_job, "CryosparcJob", FakeJobDestination)
    argv = ["--project", "P3", "--workspace", "W1", "--particles", "J1.particles", "--volume",
            "J1.volume", "--instrument", "Krios-2", "--history-db", sqlite_url]
    assert cs_job.main(argv) == 0
    engine = open_engine(sqlite_url)
    (record,) = load_groups(engine)
    assert record.source == "cryoSPARC P3-J99"
    engine.dispose()
    assert cs_job.main(argv[:-2] + ["--history-db", UNREACHABLE_URL]) == 0


# ------------------------------------------------------------------------------ statistics
def test_weighted_mean_and_chi2_from_first_principles():
    x, s = np.array([1.0, 2.0]), np.array([1.0, 0.5])
    wm = weighted_mean(x, s)
    # weights 1 and 4: mean (1*1 + 4*2)/5 = 1.8, standard error 1/sqrt(5),
    # chi^2 = 1*(1-1.8)^2 + 4*(2-1.8)^2 = 0.64 + 0.16 = 0.8 on one degree of freedom
    assert wm.mean == pytest.approx(1.8) and wm.se_stat == pytest.approx(1 / math.sqrt(5))
    assert wm.chi2 == pytest.approx(0.8) and wm.dof == 1 and wm.chi2_per_dof == pytest.approx(0.8)
    assert wm.tau == 0.0 and wm.se == wm.se_stat  # scatter within the sigmas: no excess


def test_systematic_scatter_equals_the_excess_variance():
    """With equal sigmas the excess is the sample variance minus sigma^2."""
    x, sigma = np.array([2.6, 2.7, 2.8]), 0.01
    wm = weighted_mean(x, np.full(3, sigma))
    sample_variance = np.sum((x - x.mean()) ** 2) / 2  # 0.01
    assert wm.mean == pytest.approx(2.7)
    assert wm.chi2 == pytest.approx(np.sum((x - 2.7) ** 2) / sigma**2)  # 200
    assert wm.tau == pytest.approx(math.sqrt(sample_variance - sigma**2))
    assert wm.se == pytest.approx(sigma / math.sqrt(3) * math.sqrt(wm.chi2 / 2))  # Birge ratio


def test_outlier_is_measured_against_the_others():
    """Ten data sets at 2.74 +- 0.01 and one at 3.01 +- 0.01: the odd one deviates by
    0.27 / sqrt(0.01^2 + 0.01^2/10) sigma from the others' mean; the others stay within 3."""
    x = np.array([2.74] * 10 + [3.01])
    s = np.full(11, 0.01)
    dev = deviations_sigma(x, s)
    assert dev[-1] == pytest.approx(0.27 / math.sqrt(0.01**2 + 0.01**2 / 10))
    assert np.all(np.abs(dev[:-1]) < 3)
    assert outlier_flags(dev).tolist() == [False] * 10 + [True]
    # two data sets that disagree cannot say which one is off
    assert not outlier_flags(deviations_sigma([2.7, 3.0], [0.01, 0.01])).any()


def _record_instrument(url, values, *, outlier_mag=None):
    engine = open_engine(url)
    for i, (cs, mag) in enumerate(values):
        record_report(engine, make_report(cs, tag=f"d{i}"),
                      RunLabels("Krios-2", mag, source=f"/data/ds{i}"))
    engine.dispose()


def test_show_json_flags_the_outlier_and_explains_it_by_the_pixel_size(sqlite_url, capsys):
    values = [(2.74, "105kx")] * 5 + [(3.01, "130kx")]
    _record_instrument(sqlite_url, values)
    assert cli.main(["history", "--history-db", sqlite_url, "show", "--json"]) == 0
    (panel,) = json.loads(capsys.readouterr().out)["panels"]
    assert panel["instrument"] == "Krios-2" and panel["voltage_kv"] == 300.0
    assert panel["without_outliers"]["n"] == 5
    assert panel["without_outliers"]["mean_mm"] == pytest.approx(2.74)
    assert [d["outlier"] for d in panel["datasets"]] == [False] * 5 + [True]
    change = (2.74 / 3.01) ** 0.25 - 1  # the pixel size that makes 2.74 look like 3.01
    assert panel["datasets"][-1]["pixel_change_explaining"] == pytest.approx(change)
    assert f"{abs(100 * change):.1f}% smaller pixel size at that magnification (130kx)" in \
        panel["conclusion"]
    assert {m["magnification"] for m in panel["magnifications"]} == {"105kx", "130kx"}
    assert cli.main(["history", "--history-db", sqlite_url, "show"]) == 0
    text = capsys.readouterr().out
    assert "OUTLIER" in text and "Krios-2, 300 kV: Cs 2.740 ± 0.004 mm over 5 data sets" in text


def test_history_record_imports_directories(tmp_path, sqlite_url, capsys):
    for name, cs in (("r1", 2.74), ("r2", 2.75)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "csrefine.json").write_text(json.dumps(make_report(cs, tag=name)))
    argv = ["history", "--history-db", sqlite_url, "record", str(tmp_path / "r1"),
            str(tmp_path / "r2"), "--instrument", "Krios-2", "--date", "2024-05-01"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0  # again: a no-op
    engine = open_engine(sqlite_url)
    records = load_groups(engine)
    assert len(records) == 2 and {r.run_date.date().isoformat() for r in records} == {"2024-05-01"}
    engine.dispose()
    assert cli.main(["history", "--history-db", sqlite_url, "record", str(tmp_path)]) == 2


def test_history_record_names_a_file_with_a_non_finite_number(tmp_path, sqlite_url, capsys):
    report = make_report(2.74, tag="edited")
    report["groups"][0]["cs_sigma_mm"] = float("inf")  # json writes Infinity, which json reads
    path = tmp_path / "csrefine.json"
    path.write_text(json.dumps(report))
    argv = ["history", "--history-db", sqlite_url, "record", str(tmp_path), "--instrument", "K"]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "not finite" in lines[0]
    engine = open_engine(sqlite_url)
    assert load_groups(engine) == []
    engine.dispose()


@pytest.mark.parametrize("suffix, magic", [(".pdf", b"%PDF"), (".png", b"\x89PNG")])
def test_plot_writes_a_figure(sqlite_url, tmp_path, suffix, magic):
    _record_instrument(sqlite_url, [(2.74, "105kx")] * 3 + [(3.01, "130kx")])
    engine = open_engine(sqlite_url)
    record_report(engine, make_report(2.8, tag="cal", calibrated_A=1.58, calibrated_sigma_A=0.002),
                  RunLabels("Krios-2", "105kx"))
    panels = build_panels(load_groups(engine))
    engine.dispose()
    assert panels[0].calibrated is not None
    out = tmp_path / f"history{suffix}"
    assert cli.main(["history", "--history-db", sqlite_url, "plot", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == magic
