"""RELION pipeline files: exit markers, RELION_OUTPUT_NODES.star, and whose a job directory is.

Standard library only (and :mod:`csrefine.paths`, which is too): ``csrefine-relion`` uses this
module to tell RELION's pipeliner that it failed even when the rest of csrefine cannot be
imported (:mod:`csrefine.relion.entry`).
"""

from __future__ import annotations

import re
from pathlib import Path

from csrefine.paths import REPORT_JSON, REPORT_PDF

from .star_syntax import quoted

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
MARKERS = (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED, ABORT_NOW)
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"
OUTPUT_STAR = "particles_csrefine.star"

# RELION 3.1 integer node types and RELION 4/5 node type labels.
NODE_TYPES = {
    "particles": (3, "ParticleGroupMetadata.star.relion"),
    "logfile": (13, "LogFile.pdf.relion"),
    "map": (6, "DensityMap.mrc"),
    "halfmap": (10, "DensityMap.mrc.halfmap"),
}

#: What RELION's pipeliner and GUI put into an External job's directory themselves.
RELION_JOB_FILES = frozenset({"note.txt", "run.out", "run.err", "run.job", "job.star",
                              "job_pipeline.star", "default_pipeline.star"})
#: What an External job of csrefine writes there (rebuilt half maps: ROUND_MAP).
CSREFINE_FILES = frozenset({OUTPUT_STAR, REPORT_JSON, REPORT_PDF, OUTPUT_NODES, *MARKERS})
ROUND_MAP = re.compile(r"round\d+_half[12]\.mrc")


def round_map_name(round_number: int, half: int) -> str:
    """``round2_half1.mrc``: the output name of a rebuilt half map (matches :data:`ROUND_MAP`)."""
    return f"round{round_number}_half{half}.mrc"


def refuse_foreign(job_dir) -> str | None:
    """Why csrefine must not use ``job_dir``, or None: it holds visible files or directories
    that neither RELION's pipeliner nor csrefine puts into an External job's directory, i.e.
    another job's outputs (e.g. a Refine3D job's run_data.star)."""
    try:
        names = sorted(entry.name for entry in Path(job_dir).iterdir())
    except OSError:  # absent, not a directory, a symbolic-link loop: said when it is created
        return None
    foreign = [name for name in names if not name.startswith(".")
               and name not in RELION_JOB_FILES and name not in CSREFINE_FILES
               and not ROUND_MAP.fullmatch(name)]
    if not foreign:
        return None
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    return (f"{job_dir}: this directory holds another job's outputs ({shown}); give --o the "
            f"External job's own directory (External/jobNNN/)")


def out_dir_argument(argv) -> str | None:
    """The job directory given with ``--o DIR`` or ``--o=DIR``, if any."""
    for i, arg in enumerate(argv):
        if arg == "--o" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--o="):
            return arg[4:]
    return None


def set_marker(job_dir, name: str) -> None:
    """Leave exactly one exit marker, ``name``, in ``job_dir`` (the others removed)."""
    job_dir = Path(job_dir)
    for other in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
        if other != name:
            (job_dir / other).unlink(missing_ok=True)
    (job_dir / name).touch()


def mark_failed_if_ours(argv) -> None:
    """On a failure before the job could start (bad arguments, a broken installation): touch
    RELION_JOB_EXIT_FAILURE in the directory ``--o`` names, so that the pipeliner stops waiting,
    but only where that directory exists, has no control character in its name and holds no
    other job's outputs."""
    job_dir = out_dir_argument(argv)
    if not job_dir or any(ord(c) < 32 for c in job_dir) or not Path(job_dir).is_dir():
        return
    if refuse_foreign(job_dir) is None:
        try:
            set_marker(job_dir, EXIT_FAILURE)
        except OSError:
            pass


def output_nodes_text(out_dir, nodes) -> str:
    """RELION_OUTPUT_NODES.star for (file name, kind) pairs; node names are the output
    directory as RELION gave it (relative to the project) joined with the file name, in double
    quotes (as RELION writes them) if they hold a space."""
    prefix = str(out_dir).rstrip("/") + "/"
    lines = ["", "# version 30001", "", "data_output_nodes", "", "loop_",
             "_rlnPipeLineNodeName #1", "_rlnPipeLineNodeType #2", "_rlnPipeLineNodeTypeLabel #3"]
    for name, kind in nodes:
        number, label = NODE_TYPES[kind]
        lines.append(f"{quoted(prefix + name)} {number} {label}")
    return "\n".join(lines) + "\n\n"
