"""``csrefine``: the command line (the application layer above the core and the adapters).

``csrefine refine --particles P --half-maps H1 H2 --out DIR`` refines any particle file an
installed adapter reads (RELION ``.star``, cryoSPARC ``.cs``); ``csrefine example DIR`` and any
other subcommand come from the adapters too. Adapters are found through the ``csrefine.adapters``
entry-point group (see setup.cfg), so this module, like the rest of the core, imports none of
them. An adapter module provides:

* ``PARTICLE_SUFFIXES`` — the particle-file suffixes it reads (e.g. ``(".star",)``);
* ``refine_job(args, options) -> csrefine.job.Job`` — ``csrefine refine`` for those files;
* ``add_commands(subparsers) -> {name: function(args) -> int}`` — its own subcommands, if any.

``csrefine history record|show|plot`` (the per-instrument Cs history, :mod:`csrefine.history`) is
the core's own subcommand. ``csrefine refine --instrument NAME`` (or ``$CSREFINE_INSTRUMENT``)
records the finished run in that history; a database that cannot be used is a warning, never a
failed refinement.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import InputError
from .history.commands import add_history_command
from .job import (
    Job,
    OneLineParser,
    add_job_arguments,
    console_exit,
    history_request,
    run_guarded,
    run_job,
)
from .options import options_from_namespace

ADAPTER_GROUP = "csrefine.adapters"
PROG = "csrefine"


def load_adapters() -> dict:
    """Installed adapter modules (see the module docstring) by entry-point name (e.g.
    ``relion``, ``cryosparc``)."""
    return {ep.name: ep.load() for ep in entry_points(group=ADAPTER_GROUP)}


def build_parser(adapters: dict) -> tuple[argparse.ArgumentParser, dict]:
    """The parser and the subcommands other than ``refine`` ({name: function(args) -> int})."""
    suffixes = ", ".join(s for a in adapters.values() for s in a.PARTICLE_SUFFIXES)
    parser = OneLineParser(
        prog=PROG, description="Refine the spherical-aberration coefficient Cs per optics "
                               "group from cryo-EM particle stacks.")
    parser.add_argument("--version", action="version", version=f"csrefine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=OneLineParser)
    p = sub.add_parser("refine", help="refine Cs per optics group",
                       description="Refine Cs per optics group; writes the updated particles, "
                                   "csrefine.json and logfile.pdf into --out. Relative paths in "
                                   "the particle file (RELION: rlnImageName) are taken from the "
                                   "working directory, which must be the RELION project "
                                   "directory (cryoSPARC: see --project-dir).")
    p.add_argument("--particles", required=True, help=f"particle file ({suffixes})")
    p.add_argument("--half-maps", nargs=2, required=True, metavar=("HALF1", "HALF2"),
                   help="unfiltered half maps (MRC)")
    p.add_argument("--mask", default=None, help="mask for the half-map FSC (MRC)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--project-dir", default=None,
                   help="cryoSPARC project directory (for .cs particles: blob/path is relative "
                        "to it; default: the working directory)")
    p.add_argument("--model", default=None,
                   help="atomic model (mmCIF/PDB) docked in the map: calibrate the pixel size "
                        "against it and say whether the Cs departure is pixel size or Cs")
    add_job_arguments(p, style="cli")
    commands = add_history_command(sub)
    for adapter in adapters.values():
        commands.update(adapter.add_commands(sub))
    return parser, commands


def adapter_for(particles: str, adapters: dict):
    """The adapter that reads ``particles`` (by suffix), or InputError."""
    suffix = Path(particles).suffix.lower()
    for adapter in adapters.values():
        if suffix in adapter.PARTICLE_SUFFIXES:
            return adapter
    known = ", ".join(s for a in adapters.values() for s in a.PARTICLE_SUFFIXES) or "none"
    raise InputError(f"{particles}: unknown particle file type {suffix!r} (known: {known})")


def refine_job(args: argparse.Namespace, adapters: dict) -> Job:
    """``csrefine refine``: the adapter's job for the particle file, with the history request."""
    options = options_from_namespace(args)
    job = adapter_for(args.particles, adapters).refine_job(args, options)
    job.history = history_request(args)
    return job


def run_command(command: Callable[[argparse.Namespace], int], args) -> int:
    """A subcommand other than ``refine``: bad input or an unusable path is one line."""
    return run_guarded(PROG, lambda: int(command(args) or 0), expected=(InputError, OSError))


def main(argv=None) -> int:
    """``csrefine``; returns the exit status (:mod:`csrefine.job`)."""
    adapters = load_adapters()
    parser, commands = build_parser(adapters)
    args = parser.parse_args(argv)
    if args.command in commands:
        return run_command(commands[args.command], args)
    return run_job(PROG, lambda: refine_job(args, adapters))


def console():
    """The ``csrefine`` console script."""
    console_exit(main)


if __name__ == "__main__":
    console()
