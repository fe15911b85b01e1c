"""``csrefine-relion``: csrefine as a RELION External job.

RELION calls ``csrefine-relion --o External/jobNNN/ --in_parts P.star --in_3dref R.mrc
[--in_mask M.mrc] [--LABEL VALUE ...] --j N [--pipeline_control DIR]`` from the project directory.
User parameters (the GUI's label/value pairs) are those of ``csrefine-relion --help``
(:func:`build_parser`; the options of :mod:`csrefine.options` and :mod:`csrefine.history`).

Protocol: progress and the final table on stdout (run.out), errors on stderr (run.err);
outputs ``particles_csrefine.star``, ``logfile.pdf``, ``csrefine.json``,
``RELION_OUTPUT_NODES.star`` (staged, moved into place together), then
``RELION_JOB_EXIT_SUCCESS``; on error ``RELION_JOB_EXIT_FAILURE``; when ``RELION_JOB_ABORT_NOW``
appears before the last output is in place, or on SIGTERM/SIGINT/SIGHUP, stop, remove the
request, write ``RELION_JOB_EXIT_ABORTED``, and leave no output behind. Arguments and options are
checked before any marker is touched; a directory holding another job's outputs (``--o
Refine3D/job002/``) is refused and left as it is; a directory locked by a running csrefine job
is left to that job, which writes its own marker. The console script ``csrefine-relion`` is
:func:`csrefine.relion.entry.main`, which writes the failure marker even when this module cannot
be imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from csrefine import __version__
from csrefine.errors import AbortRequested, InputError, Interrupted
from csrefine.job import Job, add_job_arguments, console_exit, history_request, run_job
from csrefine.options import options_from_namespace
from csrefine.outputs import OutputDirectory
from csrefine.paths import REPORT_PDF
from csrefine.signals import deferred

from .nodes import (
    ABORT_NOW,
    EXIT_ABORTED,
    EXIT_FAILURE,
    EXIT_SUCCESS,
    MARKERS,
    OUTPUT_NODES,
    OUTPUT_STAR,
    mark_failed_if_ours,
    output_nodes_text,
    refuse_foreign,
    set_marker,
)
from .refs import resolve_half_maps
from .rounds import kept_map_files, require_reconstruct
from .run import relion_job

PROG = "csrefine-relion"
#: Input nodes RELION's External job may pass; csrefine uses in_parts, in_3dref and in_mask.
RELION_INPUTS = ("in_parts", "in_3dref", "in_mask", "in_movies", "in_mics", "in_coords")


class _Parser(argparse.ArgumentParser):
    """argparse that raises InputError instead of exiting, so that the job can still tell
    RELION's pipeliner."""

    def error(self, message):
        raise InputError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    """RELION's External-job command line: its fixed options and csrefine's parameters as
    ``--LABEL VALUE`` pairs (a typo in a label is an error, not silently ignored)."""
    p = _Parser(prog=PROG, allow_abbrev=False,
                description="Refine Cs per optics group as a RELION External job (run from the "
                            "RELION project directory: the paths in the particle STAR are "
                            "relative to it).")
    p.add_argument("--version", action="version", version=f"csrefine {__version__}")
    p.add_argument("--o", required=True, metavar="DIR", help="the job directory, External/jobNNN/")
    p.add_argument("--in_parts", required=True, metavar="STAR",
                   help="particles (Refine3D run_data.star)")
    p.add_argument("--in_3dref", metavar="MRC|STAR",
                   help="Refine3D run_class001.mrc (half maps beside it) or postprocess.star")
    p.add_argument("--in_mask", metavar="MRC", help="mask for the half-map FSC")
    for name in RELION_INPUTS[3:]:
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--pipeline_control", metavar="DIR", help="set by RELION's pipeliner")
    # csrefine's own parameters; RELION passes an empty value field as a bare flag (= not given)
    p.add_argument("--half1", metavar="MRC", nargs="?", help="explicit unfiltered half map 1")
    p.add_argument("--half2", metavar="MRC", nargs="?", help="explicit unfiltered half map 2")
    p.add_argument("--postprocess", metavar="STAR", nargs="?",
                   help="PostProcess STAR naming both half maps and the mask")
    p.add_argument("--model", metavar="CIF|PDB", nargs="?",
                   help="atomic model docked in the map: calibrate the pixel size against it")
    add_job_arguments(p, style="relion")
    return p


class RelionJobDirectory(OutputDirectory):
    """The External job's directory: a :class:`csrefine.outputs.OutputDirectory` that refuses a
    directory holding another job's outputs, removes the markers and abort request of an earlier
    attempt once it holds the lock, and leaves exactly one marker when the job ends."""

    def open(self) -> None:
        problem = refuse_foreign(self.out_dir)
        if problem:
            raise InputError(problem)
        super().open()
        for stale in MARKERS:
            (self.out_dir / stale).unlink(missing_ok=True)

    def close(self, error: BaseException | None) -> None:
        marker = (EXIT_SUCCESS if error is None else
                  EXIT_ABORTED if isinstance(error, AbortRequested) else EXIT_FAILURE)
        with deferred(raise_pending=False):  # the job is ending: the marker must be written
            (self.out_dir / ABORT_NOW).unlink(missing_ok=True)
            set_marker(self.out_dir, marker)
        super().close(error)


def make_job(argv: list[str]) -> Job:
    """The External job from RELION's command line; InputError (after telling the pipeliner,
    where the directory is this job's) on bad arguments or options."""
    try:
        args = build_parser().parse_args(argv)
        options = options_from_namespace(args)
        if options.rounds > 1:
            require_reconstruct()
        half1, half2, mask = resolve_half_maps(args.in_3dref, args.half1, args.half2,
                                               args.postprocess, args.in_mask)
    except (InputError, Interrupted):
        mark_failed_if_ours(argv)
        raise
    print(f"csrefine: particles {args.in_parts}, half maps {half1} {half2}, "
          f"mask {mask or '(soft sphere)'}", flush=True)
    nodes = [(OUTPUT_STAR, "particles"), (REPORT_PDF, "logfile")]

    def write_nodes(path, result) -> None:  # the kept half maps of rounds 2.. are nodes too
        text = output_nodes_text(args.o, nodes + [(n, "halfmap") for n in kept_map_files(result)])
        Path(path).write_bytes(text.encode())

    job = relion_job(args.in_parts, half1, half2, args.o, options, mask=mask, model=args.model,
                     extra_files={OUTPUT_NODES: write_nodes}, directory_class=RelionJobDirectory,
                     star_name=OUTPUT_STAR)
    job.should_abort = (Path(args.o) / ABORT_NOW).exists
    job.history = history_request(args)
    return job


def main(argv=None) -> int:
    """Run the External job; returns the exit status (:mod:`csrefine.job`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_job(PROG, lambda: make_job(argv))


if __name__ == "__main__":
    console_exit(main)
