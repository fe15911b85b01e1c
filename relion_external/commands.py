"""The RELION adapter's part of the ``csrefine`` command (entry point ``csrefine.adapters``):
``csrefine refine --particles P.star ...`` and ``csrefine example DIR``."""

from __future__ import annotations

from csrefine.job import Job
from csrefine.paths import make_output_directory

from .example import write_example
from .run import relion_job

PARTICLE_SUFFIXES = (".star",)


def refine_job(args, options) -> Job:
    """``csrefine refine`` with a particle STAR (stack paths relative to the working
    directory, the RELION project directory)."""
    return relion_job(args.particles, args.half_maps[0], args.half_maps[1], args.out, options,
                      mask=args.mask, model=args.model)


def add_commands(subparsers) -> dict:
    """``csrefine example DIR``: the bundled example RELION project."""
    e = subparsers.add_parser("example", help="write a small simulated RELION project to try "
                                              "csrefine on",
                              description="Write a small simulated RELION project (two optics "
                                          "groups, true Cs 3.0 and 2.7 mm, both labelled 2.7).")
    e.add_argument("directory")
    e.add_argument("--model", default=None,
                   help="atomic model to build the map from (default: the packaged PDB 1BD2)")
    return {"example": _example}


def _example(args) -> int:
    make_output_directory(args.directory)  # one line naming the path if it cannot be made
    write_example(args.directory, args.model)
    return 0
