"""logfile.pdf from the renderer process (csrefine.report_process): the same pages as rendered
in the run's own process, and a failing child never costs the run its PDF."""

from __future__ import annotations

import re
import subprocess

import pytest

from csrefine import report_process
from csrefine.options import RefineOptions
from csrefine.relion.run import run

OPTIONS = RefineOptions(threads=2)


def _run(project, out, **kwargs):
    return run(project["star"], project["half1"], project["half2"], out, mask=project["mask"],
               options=OPTIONS, **kwargs)


def _pages(pdf) -> int:
    return len(re.findall(rb"/Type /Page\b", pdf.read_bytes()))


@pytest.fixture()
def spy(monkeypatch):
    """Records each ReportProcess the run starts, and whether its PDF was used."""
    seen = []
    original = report_process.ReportProcess.finish

    def finish(self, path):
        ok = original(self, path)
        seen.append(ok)
        return ok

    monkeypatch.setattr(report_process.ReportProcess, "finish", finish)
    return seen


def test_the_child_renders_the_same_pdf_as_the_run_itself(example_project, tmp_path, spy,
                                                         monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")  # the PDFs' creation date
    _run(example_project, tmp_path / "child")
    assert spy == [True]  # the child's PDF was used
    monkeypatch.setenv(report_process.ENV, "0")
    _run(example_project, tmp_path / "inline")
    assert spy == [True]  # no child this time
    child, inline = tmp_path / "child/logfile.pdf", tmp_path / "inline/logfile.pdf"
    assert _pages(child) >= 3
    assert child.read_bytes() == inline.read_bytes()


def test_a_child_that_fails_leaves_the_pdf_to_the_run(example_project, tmp_path, spy,
                                                     monkeypatch):
    def broken_child(self):
        # a "renderer" that reads the request and exits with an error, writing nothing
        self.proc = subprocess.Popen(["python3", "-c", "import sys; sys.stdin.buffer.read(); "
                                      "sys.exit(3)"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self.sent = False

    monkeypatch.setattr(report_process.ReportProcess, "__init__", broken_child)
    _run(example_project, tmp_path / "out")
    assert spy == [False]
    assert _pages(tmp_path / "out/logfile.pdf") >= 3
    assert not list((tmp_path / "out").glob(".csrefine-*"))  # nothing left of the staging


def test_a_run_that_fails_stops_its_child(example_project, tmp_path, monkeypatch):
    """Bad input found after the output directory was prepared (here: an abort request during
    the set-up): the renderer started for the run does not outlive it."""
    from csrefine.errors import AbortRequested

    started = []
    original = report_process.start

    def start():
        started.append(original())
        return started[-1]

    monkeypatch.setattr(report_process, "start", start)
    with pytest.raises(AbortRequested):
        _run(example_project, tmp_path / "out", should_abort=lambda: True)
    assert started and started[0] is not None
    assert started[0].proc.poll() is not None  # stopped
