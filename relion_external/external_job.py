"""``csrefine-relion``: csrefine as a RELION External job.

RELION calls ``csrefine-relion --o External/jobNNN/ --in_parts P.star --in_3dref R.mrc
[--in_mask M.mrc] [--LABEL VALUE ...] --j N [--pipeline_control DIR]`` from the project directory.
User parameters (the GUI's label/value pairs) are those of ``csrefine-relion --help``:
``resolution_low_A`` (20), ``resolution_high_A`` (FSC 0.143; ``kmin_A``/``kmax_A`` are accepted
as older names), ``half1``/``half2``, ``postprocess``, ``subsets`` (3), ``cs_search_mm`` (1.5),
``min_particles`` (100), ``device`` (cpu), ``batch_size``, ``seed``, ``reference_half``
(opposite | own), ``model`` (an atomic model docked in the map: calibrates the pixel size),
``instrument`` (record the result in the per-instrument Cs history; default
``$CSREFINE_INSTRUMENT``), ``magnification`` (its label there), ``history_db`` (SQLAlchemy URL).

Protocol: progress and the final table on stdout (run.out), errors on stderr (run.err);
outputs ``particles_csrefine.star``, ``logfile.pdf``, ``csrefine.json``,
``RELION_OUTPUT_NODES.star`` (staged, moved into place together), then
``RELION_JOB_EXIT_SUCCESS``; on error ``RELION_JOB_EXIT_FAILURE``; when ``RELION_JOB_ABORT_NOW``
appears, stop, remove it, write ``RELION_JOB_EXIT_ABORTED``, and leave no output behind.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from csrefine import __version__
from csrefine.errors import AbortRequested, InputError
from csrefine.history import add_recording_arguments, record_directory
from csrefine.io_atomic import atomic_write_bytes
from csrefine.options import add_option_arguments, options_from_namespace

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
    nodes = output_nodes_text(args.o, [(OUTPUT_STAR, "particles"), ("logfile.pdf", "logfile")])
    run(args.in_parts, half1, half2, out_dir, mask=mask, options=options,
        out_star_name=OUTPUT_STAR, progress=lambda s: print(s, flush=True),
        should_abort=(out_dir / ABORT_NOW).exists, model=args.model,
        extra_files={OUTPUT_NODES: lambda path, _: atomic_write_bytes(path, nodes.encode())})


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except InputError as exc:
        print(f"csrefine-relion: error: {exc}", file=sys.stderr, flush=True)
        out = _out_dir_guess(argv)
        if out is not None:  # RELION has created the job directory already
            out.mkdir(parents=True, exist_ok=True)
            touch(out / EXIT_FAILURE)
        return 2
    out_dir = Path(args.o)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
        (out_dir / stale).unlink(missing_ok=True)
    try:
        run_job(args)
    except AbortRequested:
        (out_dir / ABORT_NOW).unlink(missing_ok=True)
        touch(out_dir / EXIT_ABORTED)
        print("csrefine-relion: aborted by the user", file=sys.stderr, flush=True)
        return 3
    except InputError as exc:
        print(f"csrefine-relion: error: {exc}", file=sys.stderr, flush=True)
        touch(out_dir / EXIT_FAILURE)
        return 2
    except Exception:  # an unexpected failure still has to tell RELION's pipeliner
        traceback.print_exc()
        touch(out_dir / EXIT_FAILURE)
        return 1
    # the outputs are in place; a history that cannot be written only warns (on run.out)
    record_directory(out_dir, instrument=args.instrument, magnification=args.magnification,
                     history_db=args.history_db, warn=lambda s: print(s, flush=True))
    touch(out_dir / EXIT_SUCCESS)
    return 0


def _out_dir_guess(argv):
    if "--o" in argv:
        i = argv.index("--o")
        if i + 1 < len(argv):
            return Path(argv[i + 1])
    return None


if __name__ == "__main__":
    sys.exit(main())
