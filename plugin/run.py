"""The one refinement run that every entry point uses.

An adapter (RELION STAR, cryoSPARC .cs, cryoSPARC job) reads its format into
:class:`csrefine.results.RefinementInputs` and hands :func:`run_refinement` a
:class:`Destination` for its own output format. The job shell (:mod:`csrefine.job`) opens the
destination before the inputs are read and closes it, whatever happens, at the end. The run is:

1. load the inputs (the adapter's loader: every file read and checked before heavy work);
2. let the destination check them (no output replaces an input, room for the outputs);
3. refine (:func:`csrefine.pipeline.refine`), polling ``should_abort`` between batches, and with
   ``options.rounds`` > 1 rebuild the half maps and refine again (:mod:`csrefine.rounds`);
4. calibrate the pixel size against the atomic model, if one was given;
5. build the report (csrefine.json's content) and hand everything to the destination, which
   puts its outputs in place only when all are complete;
6. print the interpretation and the per-group table through the destination's ``progress``.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

from .calibration_report import calibrate_refinement, merge_into_groups
from .errors import InputError, check_abort
from .options import RefineOptions
from .pipeline import AbortFn, refine_inputs
from .report import report_dict
from .report_text import interpretation_text, summary_table
from .results import Refinement, RefinementInputs, RunResult
from .rounds import Reconstructor, refine_rounds
from .rounds_report import rounds_json, rounds_text_lines


class Destination(Protocol):
    """Where a run's results go (a directory of files, a cryoSPARC job).

    The job shell calls ``open`` before the inputs are read and ``close`` once at the end;
    :func:`run_refinement` calls ``check``, ``progress`` and ``write`` in between.
    """

    #: How the history database names this run's source (a directory, a cryoSPARC job).
    history_source: str | None

    def open(self) -> None:
        """Take the destination (create, lock); raise InputError/OutputError if unusable."""

    def progress(self, text: str) -> None:
        """Show a progress or result line to the user (run.out, the event log)."""

    def check(self, inputs: RefinementInputs) -> None:
        """The inputs are read: check that the outputs can be written (raise InputError)."""

    def write(self, result: RunResult, should_abort: AbortFn) -> None:
        """Write every output, or nothing: raise (AbortRequested on abort) before anything is
        in place."""

    def close(self, error: BaseException | None) -> None:
        """The run has ended (``error``: why it failed, None on success): give back what
        ``open`` took and say how it ended (RELION's markers, the cryoSPARC job's status)."""


def file_sources(particles, half1, half2, mask=None, model=None, **more) -> tuple[dict, tuple]:
    """For inputs read from files: csrefine.json's ``inputs`` entry (the names as given, plus
    ``more``) and the paths no output may replace."""
    sources = {"particles": str(particles), **{k: str(v) for k, v in more.items()},
               "half_maps": [str(half1), str(half2)], "mask": str(mask) if mask else None,
               "model": str(model) if model else None}
    return sources, tuple(p for p in (particles, half1, half2, mask, model) if p)


def run_refinement(load: Callable[[], RefinementInputs], options: RefineOptions,
                   destination: Destination, should_abort: AbortFn,
                   reconstruct: Reconstructor | None = None) -> RunResult:
    """Refine Cs per optics group and write the results (see the module docstring).

    load : reads the inputs; options : validated settings; should_abort : polled between steps
    and batches; reconstruct : rebuilds the half maps between rounds (needed when
    ``options.rounds`` > 1). Raises InputError on bad input, AbortRequested on abort; in both
    cases the destination has put nothing in place.
    """
    t0 = time.monotonic()
    progress = destination.progress
    if options.rounds > 1 and reconstruct is None:
        raise InputError(f"rounds = {options.rounds} needs half maps rebuilt between rounds, "
                         f"which only the RELION path can do (relion_reconstruct); use rounds = 1")
    inputs = load()
    destination.check(inputs)
    for text in inputs.warnings:
        progress(f"WARNING: {text}")
    if options.rounds > 1:
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
        progress("calibrating the pixel size against the atomic model")
        calibration = calibrate_refinement(refinement, final_inputs.half_maps, final_inputs.mask,
                                           refinement.map_pixel_size_A, inputs.structure, progress)
        report = merge_into_groups(report, calibration.json)
        refinement.timings_s["calibration"] = time.monotonic() - t_cal
    refinement.timings_s["wall"] = time.monotonic() - t0
    report["timings_s"] = dict(refinement.timings_s)
    result = RunResult(inputs, refinement, report, calibration, rounds)
    destination.write(result, should_abort)
    nothing = nothing_refined_line(refinement)
    if nothing:
        progress(nothing)
    progress(interpretation_text(refinement, calibration))
    if calibration is not None:
        progress("\n".join(calibration.lines))
    progress(summary_table(refinement, calibration))
    if rounds is not None:
        progress("\n".join(rounds_text_lines(rounds)))
    if nothing:
        progress(nothing)  # first and last: the line users read
    return result


def nothing_refined_line(refinement: Refinement) -> str | None:
    """One line when no optics group was refined (each group's reason), else None."""
    if any(g.refined for g in refinement.groups):
        return None
    reasons = "; ".join(f"optics group {g.optics_group}: {g.reason}" for g in refinement.groups)
    return f"NO OPTICS GROUP WAS REFINED, every Cs stays as it was. {reasons}"
