"""The one refinement run that every entry point uses.

An adapter (RELION STAR, cryoSPARC .cs, cryoSPARC job) reads its format into
:class:`RefinementInputs` and calls :func:`run_refinement` with a :class:`ResultWriter` for its
own output format. The run is:

1. validate the options; start importing what is needed late (plots, the compiled backend)
   in the background;
2. load the inputs (the adapter's loader: every file read and checked before heavy work);
3. let the writer check its destination (exists, writable, not locked by another job, free
   space, no input overwritten); the writer's ``release`` (if it has one) runs at the end, on
   success and on every error;
4. refine (:func:`csrefine.pipeline.refine`), polling ``should_abort`` between batches;
5. calibrate the pixel size against the atomic model, if one was given;
6. build the report (csrefine.json content) and hand everything to the writer, which stages its
   files and moves them into place only when all are complete;
7. print the interpretation and the per-group table through ``progress``.

The core calls back only through the writer, ``progress`` and ``should_abort``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .errors import InputError, OutputError, check_abort
from .io_atomic import acquire_lock, commit, release_lock, staging_directory
from .model import OpticsGroup, Particles
from .options import RefineOptions
from .paths import check_free_space, expected_output_bytes, make_output_directory, remove_if_empty
from .pipeline import Refinement
from .preload import start_preload
from .report import interpretation_text, report_dict, summary_table, write_json, write_pdf
from .rounds import Reconstructor, RoundsOutcome, refine_inputs, refine_rounds
from .rounds_report import rounds_figure, rounds_json, rounds_summary_lines, rounds_text_lines

ProgressFn = Callable[[str], None]
AbortFn = Callable[[], bool]


class ImageSource(Protocol):
    """Particle images in particle order: ``read(positions, out=None) -> (k, box, box)``."""

    def read(self, positions, out=None) -> np.ndarray: ...


@dataclass
class RefinementInputs:
    """Everything a run reads, in the core's conventions (RELION's; units in the names).

    groups : optics groups by RELION number; particles : all particles, file order;
    images : their images; half_maps : (half 1, half 2) real-space maps, [z, y, x];
    mask : optional FSC mask (same shape); map_pixel_size_A : the maps' header pixel size if
    set; structure : optional gemmi Structure docked in the map (pixel-size calibration);
    sources : what was read, for csrefine.json's ``inputs`` (file names, as given);
    source : the adapter's own parsed input (a ParticleStar, a cryoSPARC Dataset), which its
    writer uses to write the updated particles; input_paths : files the outputs must never
    replace; warnings : what the adapter found worth telling while reading (printed, and listed
    in csrefine.json's ``warnings``); report_extra : adapter facts for csrefine.json (top-level
    keys, e.g. the conventions a conversion used).
    """

    groups: dict[int, OpticsGroup]
    particles: Particles
    images: ImageSource
    half_maps: tuple[np.ndarray, np.ndarray]
    mask: np.ndarray | None = None
    map_pixel_size_A: float | None = None
    structure: object | None = None
    sources: dict = field(default_factory=dict)
    source: object | None = None
    input_paths: tuple = ()
    warnings: list = field(default_factory=list)
    report_extra: dict = field(default_factory=dict)


def file_sources(particles, half1, half2, mask=None, model=None, **more) -> tuple[dict, tuple]:
    """For inputs read from files: csrefine.json's ``inputs`` entry (the names as given, plus
    ``more``) and the paths no output may replace."""
    sources = {"particles": str(particles), **{k: str(v) for k, v in more.items()},
               "half_maps": [str(half1), str(half2)], "mask": str(mask) if mask else None,
               "model": str(model) if model else None}
    return sources, tuple(p for p in (particles, half1, half2, mask, model) if p)


@dataclass
class RunResult:
    """A finished run: the refinement, csrefine.json's content and the calibration (or None)."""

    inputs: RefinementInputs
    refinement: Refinement
    report: dict
    calibration: object | None = None
    rounds: RoundsOutcome | None = None  # with options.rounds > 1: per-round records, rebuilt maps


class ResultWriter(Protocol):
    """Where a run's results go (a directory of files, a cryoSPARC job)."""

    def prepare(self, inputs: RefinementInputs) -> None:
        """Check the destination before any heavy work (raise InputError if unusable)."""

    def write(self, result: RunResult, should_abort: AbortFn) -> None:
        """Write every output, or nothing: raise (AbortRequested on abort) before anything is
        in place."""

    def release(self, ok: bool) -> None:
        """Called once the run ends after ``prepare`` succeeded (``ok``: outputs in place):
        give back what ``prepare`` took (a lock, a directory left empty)."""


def _warn(progress: ProgressFn | None, text: str) -> None:
    if progress is not None:
        progress(f"WARNING: {text}")


def _never() -> bool:
    return False


def run_refinement(inputs: RefinementInputs | Callable[[], RefinementInputs],
                   options: RefineOptions | None, writer: ResultWriter,
                   progress: ProgressFn | None = None,
                   should_abort: AbortFn | None = None,
                   reconstruct: Reconstructor | None = None) -> RunResult:
    """Refine Cs per optics group and write the results (see the module docstring).

    inputs : the inputs, or a function that loads them (then their reading overlaps with the
    background imports). reconstruct : rebuilds half maps between rounds (needed when
    ``options.rounds`` > 1; :mod:`csrefine.rounds`). Raises InputError on bad input,
    AbortRequested on abort; in both cases the writer has put nothing in place.
    """
    t0 = time.monotonic()
    options = (options or RefineOptions()).validate()
    if options.rounds > 1 and reconstruct is None:
        raise InputError(f"rounds = {options.rounds} needs half maps rebuilt between rounds, "
                         f"which only the RELION path can do (relion_reconstruct); use rounds = 1 "
                         f"(cryoSPARC: csrefine-cryosparc --queue-reconstruction)")
    should_abort = should_abort or _never
    start_preload(options.device)
    if callable(inputs):
        inputs = inputs()
    writer.prepare(inputs)
    ok = False
    try:
        result = _refine_and_write(inputs, options, writer, progress, should_abort, t0,
                                   reconstruct)
        ok = True
    finally:
        writer.release(ok)
    return result


def _refine_and_write(inputs: RefinementInputs, options: RefineOptions, writer: ResultWriter,
                      progress: ProgressFn | None, should_abort: AbortFn, t0: float,
                      reconstruct: Reconstructor | None = None) -> RunResult:
    for text in inputs.warnings:
        _warn(progress, text)
    if options.rounds > 1 and progress is not None:
        progress(reconstruct.estimate(inputs).text(options.rounds))
    refinement = refine_inputs(inputs, options, progress, should_abort)
    check_abort(should_abort)
    rounds, final_inputs = None, inputs
    if options.rounds > 1:
        rounds = refine_rounds(inputs, options, refinement, reconstruct, progress, should_abort)
        refinement, final_inputs = rounds.refinement, rounds.inputs
    report = report_dict(refinement, inputs.sources,
                         {**inputs.report_extra,
                          "warnings": list(inputs.warnings) + list(refinement.warnings),
                          **(rounds_json(rounds) if rounds else {})})
    calibration = None
    if inputs.structure is not None:
        t_cal = time.monotonic()
        calibration = calibrate(refinement, final_inputs, progress)
        report = merge_calibration(report, calibration.json)
        refinement.timings_s["calibration"] = time.monotonic() - t_cal
    refinement.timings_s["wall"] = time.monotonic() - t0
    report["timings_s"] = dict(refinement.timings_s)
    result = RunResult(inputs, refinement, report, calibration, rounds)
    writer.write(result, should_abort)
    if progress is not None:
        progress(interpretation_text(refinement, calibration))
        if calibration is not None:
            progress("\n".join(calibration.lines))
        progress(summary_table(refinement, calibration))
        if rounds is not None:
            progress("\n".join(rounds_text_lines(rounds)))
    return result


def calibrate(refinement: Refinement, inputs: RefinementInputs, progress: ProgressFn | None):
    """The pixel-size calibration against ``inputs.structure`` (a CalibrationOutcome)."""
    from .calibration_report import calibrate_refinement

    if progress is not None:
        progress("calibrating the pixel size against the atomic model")
    return calibrate_refinement(refinement, inputs.half_maps, inputs.mask,
                                refinement.map_pixel_size_A, inputs.structure, progress)


def merge_calibration(report: dict, extra: dict) -> dict:
    """csrefine.json with the calibration's keys, and each group's calibrated Cs and verdict."""
    from .calibration_report import merge_into_groups

    return merge_into_groups(report, extra)


# ------------------------------------------------------------------------------------------
# A directory of files (the RELION and .cs paths)

FileWriter = Callable[[Path, RunResult], None]
REPORT_JSON = "csrefine.json"
REPORT_PDF = "logfile.pdf"


def _write_report_json(path: Path, result: RunResult) -> None:
    write_json(path, result.report)


def _write_report_pdf(path: Path, result: RunResult) -> None:
    cal, rounds = result.calibration, result.rounds
    write_pdf(path, result.refinement,
              extra_figures=[rounds_figure(rounds, result.refinement.map_pixel_size_A or 1.0)]
              if rounds else [],
              extra_lines=(cal.lines[:1] if cal else [])
              + (rounds_summary_lines(rounds) if rounds else []),
              calibration=cal)


class OutputDirectory:
    """A :class:`ResultWriter` for a directory (created once the inputs are valid): the
    particle file, csrefine.json, logfile.pdf and any ``extra_files``, staged in a hidden
    directory inside ``out_dir`` and moved into place only when all are written (nothing is left
    behind on error or abort). The directory is locked (:func:`csrefine.io_atomic.acquire_lock`)
    from ``prepare`` to ``release``; a directory this run created is removed again if the run
    fails and leaves it empty.

    particles_name / write_particles : the adapter's particle file and the function writing it
    (``write_particles(path, result)``); extra_files : more {name: function} (e.g. RELION's
    output nodes).
    """

    def __init__(self, out_dir, particles_name: str, write_particles: FileWriter,
                 extra_files: dict[str, FileWriter] | None = None):
        self.out_dir = Path(out_dir)
        self.files: dict[str, FileWriter] = {particles_name: write_particles,
                                             REPORT_JSON: _write_report_json,
                                             REPORT_PDF: _write_report_pdf,
                                             **(extra_files or {})}

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def prepare(self, inputs: RefinementInputs) -> None:
        """Check that no output would replace an input, create the directory (the inputs are
        read and valid by now), check that it is writable, lock it and check the free space."""
        outputs = {os.path.realpath(self.out_dir / n) for n in self.names}
        for path in inputs.input_paths:
            if path and os.path.realpath(path) in outputs:
                raise InputError(f"{path}: this input would be overwritten by an output of the "
                                 f"same name; choose another output directory")
        self._created = make_output_directory(self.out_dir)
        try:
            acquire_lock(self.out_dir)
        except OutputError:
            if self._created:
                remove_if_empty(self.out_dir)
            raise
        try:
            check_free_space(self.out_dir, expected_output_bytes(inputs.sources.get("particles")))
        except BaseException:
            self.release(False)
            raise

    def release(self, ok: bool) -> None:
        """Remove the lock (and the directory, if this run created it and it stayed empty)."""
        release_lock(self.out_dir)
        if not ok and getattr(self, "_created", False):
            remove_if_empty(self.out_dir)

    def write(self, result: RunResult, should_abort: AbortFn) -> None:
        try:
            with staging_directory(self.out_dir) as staging:
                for name, write_file in self.files.items():
                    write_file(staging / name, result)
                    check_abort(should_abort)
                commit(staging, self.out_dir, self.names)
        except OSError as exc:  # disk full, quota, a directory removed under the job
            raise OutputError(f"{self.out_dir}: cannot write the outputs ({exc.strerror or exc}); "
                              f"nothing was written") from None
