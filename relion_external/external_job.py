"""``csrefine-relion``: csrefine as a RELION External job.

RELION calls ``csrefine-relion --o External/jobNNN/ --in_parts P.star --in_3dref R.mrc
[--in_mask M.mrc] [--LABEL VALUE ...] --j N [--pipeline_control DIR]`` from the project directory.
User parameters (the GUI's label/value pairs) are those of ``csrefine-relion --help``:
``resolution_low_A`` (20), ``resolution_high_A`` (FSC 0.143; ``kmin_A``/``kmax_A`` are accepted
as older names), ``half1``/``half2``, ``postprocess``, ``subsets`` (3), ``cs_search_mm`` (1.5),
``min_particles`` (100), ``device`` (cpu), ``batch_size``, ``seed``, ``reference_half``
(opposite | own), ``model`` (an atomic model docked in the map: calibrates the pixel size),
``rounds`` (1; more: rebuild the half maps with relion_reconstruct after each round and refine
again, :mod:`csrefine.relion.rounds`), ``keep_round_maps`` (yes | no),
``instrument`` (record the result in the per-instrument Cs history; default
``$CSREFINE_INSTRUMENT``), ``magnification`` (its label there), ``history_db`` (SQLAlchemy URL).

Protocol: progress and the final table on stdout (run.out), errors on stderr (run.err);
outputs ``particles_csrefine.star``, ``logfile.pdf``, ``csrefine.json``,
``RELION_OUTPUT_NODES.star`` (staged, moved into place together), then
``RELION_JOB_EXIT_SUCCESS``; on error ``RELION_JOB_EXIT_FAILURE``; when ``RELION_JOB_ABORT_NOW``
appears before the last output is in place, or on SIGTERM/SIGINT/SIGHUP, stop, remove the
request, write ``RELION_JOB_EXIT_ABORTED``, and leave no output behind. The console script
``csrefine-relion`` is :func:`csrefine.relion.entry.main`, which writes the failure marker even
when this module cannot be imported.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from csrefine import __version__
from csrefine.errors import AbortRequested, InputError, Interrupted, quiet_library_warnings
from csrefine.history import add_recording_arguments, record_directory
from csrefine.io_atomic import acquire_lock, atomic_write_bytes, release_lock
from csrefine.options import add_option_arguments, options_from_namespace
from csrefine.paths import make_output_directory
from csrefine.signals import deferred, interrupts_raise

from .entry import write_marker
from .nodes import ABORT_NOW, EXIT_ABORTED, EXIT_FAILURE, EXIT_SUCCESS, OUTPUT_NODES, output_nodes_text, touch
from .refs import resolve_half_maps

OUTPUT_STAR = "particles_csrefine.star"
#: Input nodes RELION's External job may pass; csrefine uses in_parts, in_3dref and in_mask.
RELION_INPUTS = ("in_parts", "in_3dref", "in_mask", "in_movies", "in_mics", "in_coords")


class _Parser(argparse.ArgumentParser):
    """argparse that raises InputError instead of exiting, so that the job can still write
    RELION_JOB_EXIT_FAILURE."""

    def error(self, message):
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    """RELION's External-job command line: its fixed options and csrefine's parameters as
    ``--LABEL VALUE`` pairs (a typo in a label is an error, not silently ignored)."""
    p = _Parser(prog="csrefine-relion", allow_abbrev=False,
                description="Refine Cs per optics group as a RELION External job (run from the "
                            "RELION project directory).")
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
    add_option_arguments(p, style="relion")
    add_recording_arguments(p, style="relion")
    return p


def run_job(args: argparse.Namespace) -> None:
    """Do the job's work; raise InputError/AbortRequested on bad input or abort."""
    from .run import run

    out_dir = Path(args.o)
    options = options_from_namespace(args)
    half1, half2, mask = resolve_half_maps(args.in_3dref, args.half1, args.half2,
                                           args.postprocess, args.in_mask)
    print(f"csrefine: particles {args.in_parts}, half maps {half1} {half2}, "
          f"mask {mask or '(soft sphere)'}", flush=True)
    nodes = [(OUTPUT_STAR, "particles"), ("logfile.pdf", "logfile")]

    def write_nodes(path, result) -> None:  # the kept half maps of rounds 2.. are nodes too
        from .rounds import kept_round_maps

        text = output_nodes_text(args.o, nodes + [(n, "halfmap") for n in kept_round_maps(result)])
        atomic_write_bytes(path, text.encode())

    run(args.in_parts, half1, half2, out_dir, mask=mask, options=options,
        out_star_name=OUTPUT_STAR, progress=lambda s: print(s, flush=True),
        should_abort=(out_dir / ABORT_NOW).exists, model=args.model,
        extra_files={OUTPUT_NODES: write_nodes})


#: Exit statuses: bad input or unusable output directory, an unexpected failure, an abort
#: requested through RELION_JOB_ABORT_NOW; a signal exits with 128 + its number (143 SIGTERM).
EXIT_STATUS_INPUT, EXIT_STATUS_FAILED, EXIT_STATUS_ABORTED = 2, 1, 3
SIGNAL_STATUS_BASE = 128


def _error(text) -> None:
    print(f"csrefine-relion: error: {text}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """Run the External job; returns the exit status (0 with RELION_JOB_EXIT_SUCCESS, else
    non-zero with RELION_JOB_EXIT_FAILURE or _ABORTED; see the module docstring).

    SIGTERM, SIGINT and SIGHUP stop the job like an abort request. The job directory is locked
    (``.csrefine.lock``) while the job runs: a second job there fails at once and touches none of
    the first job's files; a directory that cannot be used gets no marker (one line on stderr).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    with interrupts_raise(), quiet_library_warnings():
        try:
            args = build_parser().parse_args(argv)
        except InputError as exc:
            _error(exc)
            write_marker(argv, EXIT_FAILURE)
            return EXIT_STATUS_INPUT
        except Interrupted as exc:
            _error(exc)
            write_marker(argv, EXIT_ABORTED)
            return SIGNAL_STATUS_BASE + exc.signum
        out_dir = Path(args.o)
        try:
            make_output_directory(out_dir)
            acquire_lock(out_dir)
        except InputError as exc:  # unusable directory, or another job holds it: no marker
            _error(exc)
            return EXIT_STATUS_INPUT
        try:
            return _locked_job(args, out_dir)
        finally:
            release_lock(out_dir)


def _locked_job(args, out_dir: Path) -> int:
    """The job once its directory is locked: stale markers (and a stale abort request) removed,
    the work, then exactly one marker."""
    for stale in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED, ABORT_NOW):
        (out_dir / stale).unlink(missing_ok=True)
    try:
        run_job(args)
        # the outputs are in place; a history that cannot be written only warns (on run.out)
        record_directory(out_dir, instrument=args.instrument, magnification=args.magnification,
                         history_db=args.history_db, warn=lambda s: print(s, flush=True))
        with deferred(raise_pending=False):  # the outputs are in place: the job has succeeded
            (out_dir / ABORT_NOW).unlink(missing_ok=True)  # a request that came too late
            touch(out_dir / EXIT_SUCCESS)
        return 0
    except AbortRequested as exc:
        with deferred(raise_pending=False):
            (out_dir / ABORT_NOW).unlink(missing_ok=True)
            touch(out_dir / EXIT_ABORTED)
            if isinstance(exc, Interrupted):
                _error(f"{exc}; nothing was written")
                return SIGNAL_STATUS_BASE + exc.signum
            print("csrefine-relion: aborted by the user; nothing was written", file=sys.stderr,
                  flush=True)
            return EXIT_STATUS_ABORTED
    except InputError as exc:
        with deferred(raise_pending=False):
            _error(exc)
            touch(out_dir / EXIT_FAILURE)
            return EXIT_STATUS_INPUT
    except Exception:  # an unexpected failure still has to tell RELION's pipeliner
        with deferred(raise_pending=False):
            traceback.print_exc()
            touch(out_dir / EXIT_FAILURE)
            return EXIT_STATUS_FAILED


if __name__ == "__main__":
    from ..console import run as run_console

    run_console(main)  # no interpreter teardown (csrefine.console)
