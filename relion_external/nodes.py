"""RELION pipeline files: exit markers and RELION_OUTPUT_NODES.star."""

from __future__ import annotations

from pathlib import Path

from .star_syntax import quoted

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"

# RELION 3.1 integer node types and RELION 4/5 node type labels.
NODE_TYPES = {
    "particles": (3, "ParticleGroupMetadata.star.relion"),
    "logfile": (13, "LogFile.pdf.relion"),
    "map": (6, "DensityMap.mrc"),
    "halfmap": (10, "DensityMap.mrc.halfmap"),
}


def touch(path) -> None:
    Path(path).touch()


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
