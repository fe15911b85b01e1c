"""A run's outputs as a directory of files (the CLI, the RELION External job, ``.cs`` runs).

:class:`OutputDirectory` is the :class:`csrefine.run.Destination` of every file-based run: the
particle file, csrefine.json, logfile.pdf and any further files, staged in a hidden directory
inside the output directory and moved into place only when all are written, so that nothing is
left behind on error, abort or signal. The directory is locked from ``open`` to ``close``; the
directories ``open`` created are removed again if the run fails and leaves them empty.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import InputError, OutputError, check_abort
from .io_atomic import acquire_lock, clear_leftovers, commit, release_lock, staging_directory
from .paths import (
    REPORT_JSON,
    REPORT_PDF,
    check_free_space,
    check_path_text,
    expected_output_bytes,
    make_output_directory,
    remove_created,
)
from .report import refinement_pages, write_json, write_pdf
from .results import RefinementInputs, RunResult
from .rounds_report import rounds_figure, rounds_json, rounds_summary_lines

FileWriter = Callable[[Path, RunResult], None]


def report_pages(result: RunResult) -> list[tuple]:
    """The report's pages as (title, figure, raw data): the refinement's and the calibration's
    (:func:`csrefine.report.refinement_pages`, the summary with the calibrated pixel size and the
    rounds' lines), then the rounds' page. logfile.pdf holds them; the cryoSPARC job logs them."""
    cal, rounds = result.calibration, result.rounds
    extra_lines = (cal.lines[:1] if cal else []) + (rounds_summary_lines(rounds) if rounds else [])
    pages = refinement_pages(result.refinement, cal, extra_lines, result.report)
    if rounds:
        title, fig = rounds_figure(rounds, result.refinement.map_pixel_size_A or 1.0)
        pages.append((title, fig, rounds_json(rounds)))
    return pages


def print_line(text: str) -> None:
    print(text, flush=True)


class OutputDirectory:
    """A :class:`csrefine.run.Destination` writing files into ``out_dir``.

    particles_name / write_particles : the adapter's particle file and its writer
    (``write_particles(path, result)``); extra_files : more {name: writer};
    result_files : more {name: writer} that depend on the result (e.g. rebuilt half maps);
    reserved_names : further names the run may write (checked against the inputs);
    cleanups : called when the run ends, however it ends; progress : where lines go.
    """

    def __init__(self, out_dir, particles_name: str, write_particles: FileWriter,
                 extra_files: dict[str, FileWriter] | None = None, *,
                 result_files: Callable[[RunResult], dict[str, FileWriter]] | None = None,
                 reserved_names: tuple[str, ...] = (), cleanups: tuple[Callable, ...] = (),
                 progress: Callable[[str], None] = print_line):
        self.out_dir = Path(check_path_text(out_dir, "output directory"))
        self.files: dict[str, FileWriter] = {particles_name: write_particles,
                                             REPORT_JSON: lambda path, r: write_json(path, r.report),
                                             REPORT_PDF: lambda path, r: write_pdf(path, report_pages(r)),
                                             **(extra_files or {})}
        self.result_files = result_files
        self.reserved_names = tuple(reserved_names)
        self.cleanups = tuple(cleanups)
        self.progress = progress
        self.history_source: str | None = None
        self._created: list[Path] = []
        self._locked = False

    def open(self) -> None:
        """Create the directory (and its parents) if needed, check that it is writable, lock
        it, and remove what a killed run left there (its staging directories)."""
        self._created = make_output_directory(self.out_dir)
        try:
            acquire_lock(self.out_dir)
        except BaseException:
            remove_created(self._created)
            raise
        self._locked = True
        self.history_source = str(self.out_dir.resolve())
        clear_leftovers(self.out_dir)

    def check(self, inputs: RefinementInputs) -> None:
        """No output may replace an input; enough free space for the outputs."""
        outputs = {os.path.realpath(self.out_dir / n) for n in (*self.files, *self.reserved_names)}
        for path in inputs.input_paths:
            if path and os.path.realpath(path) in outputs:
                raise InputError(f"{path}: this input would be overwritten by an output of the "
                                 f"same name; choose another output directory")
        check_free_space(self.out_dir, expected_output_bytes(inputs.sources.get("particles")))

    def write(self, result: RunResult, should_abort) -> None:
        files = {**self.files, **(self.result_files(result) if self.result_files else {})}
        try:
            with staging_directory(self.out_dir) as staging:
                for name, write_file in files.items():
                    write_file(staging / name, result)
                    check_abort(should_abort)
                commit(staging, self.out_dir, list(files))
        except OSError as exc:  # disk full, quota, a directory removed under the job
            raise OutputError(f"{self.out_dir}: cannot write the outputs ({exc.strerror or exc}); "
                              f"nothing was written") from None

    def close(self, error: BaseException | None) -> None:
        """Run the clean-ups, release the lock, and remove the directories this run created if
        it failed and left them empty."""
        for cleanup in self.cleanups:
            cleanup()
        if self._locked:
            release_lock(self.out_dir)
            self._locked = False
        if error is not None:
            remove_created(self._created)
