"""``csrefine-relion``: csrefine as a RELION External job.

RELION calls ``csrefine-relion --o External/jobNNN/ --in_parts P.star --in_3dref R.mrc
[--in_mask M.mrc] [--LABEL VALUE ...] --j N [--pipeline_control DIR]`` from the project directory.
User parameters (the GUI's label/value pairs): ``kmin_A`` (20), ``kmax_A`` (FSC 0.143),
``half1``/``half2``, ``postprocess``, ``subsets`` (3), ``cs_search_mm`` (1.5), ``min_particles``
(100), ``device`` (cpu), ``batch_size``, ``reference_half`` (opposite | own), ``model`` (an atomic
model docked in the map: calibrates the pixel size).

Protocol: progress and the final table on stdout (run.out), errors on stderr (run.err);
outputs ``particles_csrefine.star``, ``logfile.pdf``, ``csrefine.json``,
``RELION_OUTPUT_NODES.star``, then ``RELION_JOB_EXIT_SUCCESS``; on error
``RELION_JOB_EXIT_FAILURE``; when ``RELION_JOB_ABORT_NOW`` appears, stop between batches, remove
it, write ``RELION_JOB_EXIT_ABORTED``, and leave no output behind.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from csrefine.errors import AbortRequested, InputError
from csrefine.pipeline import RefineOptions

from .nodes import (ABORT_NOW, EXIT_ABORTED, EXIT_FAILURE, EXIT_SUCCESS, touch,
                    write_output_nodes)
from .refs import resolve_half_maps

PARAMETERS = {
    "kmin_A": float, "kmax_A": float, "half1": str, "half2": str, "postprocess": str,
    "subsets": int, "cs_search_mm": float, "min_particles": int, "device": str, "batch_size": int,
    "seed": int, "reference_half": str, "model": str,
}
OUTPUT_STAR = "particles_csrefine.star"


def parse_args(argv: list[str]) -> dict:
    """RELION's External-job command line -> dict. Unknown labels are an error (typos would
    otherwise be silently ignored); a label with no value is a bare flag (value '')."""
    args = {"j": 1}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise InputError(f"unexpected argument {token!r}")
        key = token[2:]
        value = ""
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 1
        i += 1
        if key in ("o", "in_parts", "in_3dref", "in_mask", "pipeline_control", "in_movies",
                   "in_mics", "in_coords"):
            args[key] = value
        elif key == "j":
            args["j"] = _convert("j", value, int)
        elif key in PARAMETERS:
            args[key] = _convert(key, value, PARAMETERS[key])
        else:
            raise InputError(f"unknown parameter --{key} (known: {', '.join(sorted(PARAMETERS))})")
    for required in ("o", "in_parts"):
        if not args.get(required):
            raise InputError(f"missing --{required}")
    return args


def _convert(key, value, kind):
    try:
        return kind(value)
    except ValueError:
        raise InputError(f"parameter {key}: cannot read {value!r} as {kind.__name__}") from None


def options_from(args: dict) -> RefineOptions:
    opts = RefineOptions(threads=max(int(args.get("j", 1)), 1))
    for key, attr in (("kmin_A", "k_min_A"), ("kmax_A", "k_max_A"), ("subsets", "subsets"),
                      ("cs_search_mm", "cs_search_mm"), ("min_particles", "min_particles"),
                      ("device", "device"), ("batch_size", "batch_size"), ("seed", "seed"),
                      ("reference_half", "reference_half")):
        if key in args:
            setattr(opts, attr, args[key])
    if opts.k_min_A <= 0 or (opts.k_max_A is not None and opts.k_max_A <= 0):
        raise InputError("kmin_A and kmax_A must be positive")
    if opts.subsets < 2:
        raise InputError(f"subsets must be at least 2, got {opts.subsets}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {opts.batch_size}")
    return opts


def run_job(args: dict) -> None:
    """Do the job's work; raise InputError/AbortRequested on bad input or abort."""
    from .run import run

    out_dir = Path(args["o"])
    if not out_dir.is_dir():
        out_dir.mkdir(parents=True, exist_ok=True)
    options = options_from(args)
    half1, half2, mask = resolve_half_maps(args.get("in_3dref"), args.get("half1"),
                                           args.get("half2"), args.get("postprocess"),
                                           args.get("in_mask"))
    abort_file = out_dir / ABORT_NOW
    print(f"csrefine: particles {args['in_parts']}, half maps {half1} {half2}, "
          f"mask {mask or '(soft sphere)'}", flush=True)
    run(args["in_parts"], half1, half2, out_dir, mask=mask, options=options,
        out_star_name=OUTPUT_STAR, progress=lambda s: print(s, flush=True),
        should_abort=abort_file.exists, model=args.get("model"))
    write_output_nodes(out_dir, [(OUTPUT_STAR, "particles"), ("logfile.pdf", "logfile")])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except InputError as exc:
        print(f"csrefine-relion: error: {exc}", file=sys.stderr, flush=True)
        out = _out_dir_guess(argv)
        if out is not None:  # RELION has created the job directory already
            out.mkdir(parents=True, exist_ok=True)
            touch(out / EXIT_FAILURE)
        return 2
    out_dir = Path(args["o"])
    for stale in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
        (out_dir / stale).unlink(missing_ok=True)
    try:
        run_job(args)
    except AbortRequested:
        _remove_outputs(out_dir)
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
    touch(out_dir / EXIT_SUCCESS)
    return 0


def _out_dir_guess(argv):
    if "--o" in argv:
        i = argv.index("--o")
        if i + 1 < len(argv):
            return Path(argv[i + 1])
    return None


def _remove_outputs(out_dir: Path) -> None:
    for name in (OUTPUT_STAR, "csrefine.json", "logfile.pdf", "RELION_OUTPUT_NODES.star"):
        (out_dir / name).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
