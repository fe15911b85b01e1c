"""The cryoSPARC adapter's part of the ``csrefine`` command (entry point ``csrefine.adapters``):
``csrefine refine --particles P.cs --project-dir DIR ...`` without a cryoSPARC server."""

from __future__ import annotations

PARTICLE_SUFFIXES = (".cs",)


def refine_files(args, options, progress):
    """``csrefine refine`` with a cryoSPARC ``.cs`` dataset (``blob/path`` relative to
    ``--project-dir``, default the working directory)."""
    from .offline import run

    return run(args.particles, args.half_maps[0], args.half_maps[1], args.out, mask=args.mask,
               model=args.model, project_dir=args.project_dir or ".", options=options,
               progress=progress)


def add_commands(subparsers) -> dict:
    """No subcommands of its own (the cryoSPARC job is ``csrefine-cryosparc``)."""
    return {}
