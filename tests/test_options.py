"""Options: one table, one validation, the same for every entry point (no data needed)."""

from __future__ import annotations

import argparse

import pytest

from csrefine.cli import build_parser as cli_parser
from csrefine.cli import load_adapters
from csrefine.cli import main as cli_main
from csrefine.errors import InputError
from csrefine.options import USER_OPTIONS, RefineOptions, add_option_arguments, options_from_namespace
from csrefine.relion.external_job import build_parser as relion_parser
from csrefine.relion.external_job import main as relion_main

REQUIRED_CLI = ["refine", "--particles", "p.star", "--half-maps", "a.mrc", "b.mrc", "--out", "o"]
REQUIRED_RELION = ["--o", "External/job009/", "--in_parts", "p.star"]


def _cli(*extra):
    return options_from_namespace(cli_parser(load_adapters())[0].parse_args(REQUIRED_CLI + list(extra)))


def _relion(*extra):
    return options_from_namespace(relion_parser().parse_args(REQUIRED_RELION + list(extra)))


def test_defaults_are_the_records():
    assert _cli() == RefineOptions() == _relion()


def test_new_names_and_old_aliases_set_the_same_field():
    for parse, new, old in ((_cli, "--resolution-high-A", "--kmax-A"),
                            (_relion, "--resolution_high_A", "--kmax_A")):
        assert parse(new, "3.5").resolution_high_A == 3.5 == parse(old, "3.5").resolution_high_A
    assert _cli("--resolution-low-A", "15").resolution_low_A == 15.0
    assert _relion("--kmin_A", "15").resolution_low_A == 15.0
    assert _relion("--j", "4").threads == 4 == _cli("--j", "4").threads


def test_every_user_option_reaches_the_record():
    values = {float: "7.5", int: "7", str: "numpy"}
    for opt in USER_OPTIONS:
        value = opt.choices[-1] if opt.choices else values[opt.kind]
        flag = "--" + opt.name.replace("_", "-")
        try:
            options = _cli(flag, value)
        except InputError:  # e.g. 7.5 A as the high end is coarser than the 20 A low end
            continue
        assert getattr(options, opt.field) == opt.kind(value), opt.field


@pytest.mark.parametrize("extra, named", [
    (("--resolution-high-A", "nan"), "resolution_high_A"),
    (("--resolution-high-A", "inf"), "resolution_high_A"),
    (("--resolution-high-A", "25"), "resolution_high_A"),  # coarser than the 20 A low end
    (("--resolution-low-A", "-3"), "resolution_low_A"),
    (("--cs-search-mm", "nan"), "cs_search_mm"),
    (("--subsets", "1"), "subsets"),
    (("--j", "0"), "threads"),
    (("--batch-size", "0"), "batch_size"),
    (("--min-particles", "-1"), "min_particles"),
    (("--device", "tpu"), "tpu"),
])
def test_bad_values_are_refused_naming_the_option(extra, named):
    with pytest.raises(InputError, match=named):
        _cli(*extra)
    relion_extra = (extra[0].replace("-", "_").replace("__", "--"), extra[1])
    with pytest.raises(InputError, match=named):
        _relion(*relion_extra)


def test_records_are_validated_where_they_are_built_in_code():
    with pytest.raises(InputError, match="reference_half"):
        RefineOptions(reference_half="mine").validate()
    with pytest.raises(InputError, match="seed"):
        RefineOptions(seed=1.5).validate()


def test_relion_bare_label_means_the_default():
    """RELION passes a parameter with an empty value field as a bare --LABEL."""
    args = relion_parser().parse_args(REQUIRED_RELION + ["--resolution_high_A", "--model", "--j", "2"])
    assert options_from_namespace(args) == RefineOptions(threads=2)
    assert args.model is None


def test_cli_style_and_relion_style_flags():
    p = argparse.ArgumentParser()
    add_option_arguments(p, style="relion")
    flags = {s for a in p._actions for s in a.option_strings}
    assert {"--resolution_high_A", "--kmax_A", "--cs_search_mm", "--j"} <= flags


def test_help_and_version_exit_zero(capsys):
    for entry, argv in ((cli_main, ["--help"]), (cli_main, ["--version"]),
                        (cli_main, ["refine", "--help"]), (cli_main, ["example", "--help"]),
                        (relion_main, ["--help"]), (relion_main, ["--version"])):
        with pytest.raises(SystemExit) as exc:
            entry(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "csrefine" in out and "resolution_high_A" in out and "--resolution-high-A" in out


def test_relion_job_refuses_an_unknown_label_and_marks_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "External/job009").mkdir(parents=True)  # RELION's pipeliner makes it
    assert relion_main(REQUIRED_RELION + ["--kmni_A", "15"]) == 2
    err = capsys.readouterr().err
    assert "--kmni_A" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "External/job009/RELION_JOB_EXIT_FAILURE").is_file()


def test_cli_unknown_particle_type(tmp_path, capsys):
    code = cli_main(["refine", "--particles", str(tmp_path / "p.txt"), "--half-maps", "a", "b",
                     "--out", str(tmp_path / "o")])
    assert code == 2
    assert "unknown particle file type '.txt'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
