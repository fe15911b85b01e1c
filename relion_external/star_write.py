"""Write particle STAR files for RELION: the input with refined values, and new files.

:func:`write_updated_star` re-emits the rows of the input's optics and particle tables from
their values (:func:`csrefine.relion.star_syntax.tokens`): every value that does not change is
copied as its exact text, the changed ones are formatted, and the values of a row are joined by
single spaces. RELION needs the values, not the input's padding, so the output is the same for
any layout of the input (right- or left-aligned, tabs, quotes, CRLF). Every other line (header,
comments, other blocks) is copied, with LF line ends (RELION 3.1.3 reads no table of a CRLF
file). Comment lines among a table's rows are left out (RELION refuses them), and a table's
rows are followed by a blank line (RELION reads a ``data_`` right after a row as a row).

New files (:func:`write_new_star`: the example, ``csrefine convert``) are written in RELION's own
layout from the particles' values.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from csrefine.errors import InputError
from csrefine.io_atomic import atomic_output
from csrefine.model import OpticsGroup, Particles

from .star_syntax import DATA, END, LOOP, ROW, ROW_COMMENT, quoted, star_lines, tokens

if TYPE_CHECKING:
    from .star_io import ParticleStar

#: The vector column a refined optics table may gain; the groups without terms get "[]".
EVEN_ZERNIKE = "rlnEvenZernike"


def format_vector(values) -> str:
    """A RELION vector value, '[a,b,...]', each number exact (shortest round-trip form)."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def _optics_changes(cs_mm, beam_tilt_mrad, even_zernike) -> dict[int, dict[str, str]]:
    """Column -> new text, per refined optics group."""
    changes: dict[int, dict[str, str]] = {}
    for gid, cs in cs_mm.items():
        new = changes.setdefault(gid, {})
        # Cs and beam tilt with nine decimals: a 1e-6 mm step of Cs moves the phase ~4e-6 rad at 2 Å
        new["rlnSphericalAberration"] = f"{cs:.9f}"
        for name, value in zip(("rlnBeamTiltX", "rlnBeamTiltY"), beam_tilt_mrad.get(gid, ())):
            new[name] = f"{value:.9f}"
    for gid, terms in even_zernike.items():
        changes.setdefault(gid, {})[EVEN_ZERNIKE] = format_vector(terms)
    return changes


class _TableEdit:
    """How the rows of one table change: per optics group, (column position, new text) and the
    defocus offset (Å); the texts of the column the table gains, if any."""

    def __init__(self, labels: list, header: list, changes: dict[int, dict[str, str]],
                 defocus_offset_A: dict[int, float], optics: bool):
        position = {name: i for i, name in enumerate(labels)}
        self.group_column = position["rlnOpticsGroup"] if optics else None
        self.changes = {gid: [(position[c], text) for c, text in new.items() if c in position]
                        for gid, new in changes.items()}
        self.offsets = {gid: offset for gid, offset in defocus_offset_A.items() if offset != 0}
        self.defocus = [position[c] for c in ("rlnDefocusU", "rlnDefocusV")
                        if c in position and self.offsets]
        self.added: dict[int, list] = {}
        if any(EVEN_ZERNIKE in new for new in changes.values()) and EVEN_ZERNIKE not in position:
            self.added = {gid: [new.get(EVEN_ZERNIKE, "[]")] for gid, new in changes.items()}
            last = max(i for i, t in enumerate(header) if t.lstrip().startswith("_"))
            header.insert(last + 1, f"_{EVEN_ZERNIKE} #{len(labels) + 1}\n")

    def row(self, values: list[str], gid: int) -> str:
        for i, text in self.changes.get(gid, ()):
            values[i] = text
        offset = self.offsets.get(gid)
        if offset is not None:
            for i in self.defocus:
                values[i] = f"{float(values[i]) + offset:.6f}"
        if self.added:
            values += self.added.get(gid, ["[]"])
        return " ".join(values) + "\n"


def _output_lines(lines, star: "ParticleStar", optics: dict, particles: dict,
                  defocus_offset_A: dict, n_rows: list):
    """The output's lines for the input's ``lines`` (see the module docstring); ``n_rows[0]``
    counts the particle rows."""
    header = None  # a loop's lines from loop_ to its first row (held: a column may be added)
    edit = None  # the current table's _TableEdit; None: its rows are copied
    in_rows, groups = False, star.particles.optics_group
    for _, kind, block, labels, line in star_lines(lines):
        text = line if line.endswith("\n") else line + "\n"
        if kind in (DATA, LOOP):
            yield "".join(header or []) + ("\n" if in_rows else "")  # a loop without rows
            in_rows, edit, header = False, None, [text] if kind == LOOP else None
            if kind == DATA:
                yield text
        elif kind == ROW:
            if header is not None:  # the first row: whether and how the rows change
                if star.optics_table and block == "optics":
                    edit = _TableEdit(labels, header, optics, {}, True)
                elif block == star.particle_block and "rlnImageName" in labels:
                    edit = _TableEdit(labels, header, particles, defocus_offset_A, False)
                yield "".join(header)
                header = None
            in_rows = True
            if edit is None:
                yield text
            elif edit.group_column is not None:
                values = tokens(line)
                yield edit.row(values, int(float(values[edit.group_column])))
            else:
                row, n_rows[0] = n_rows[0], n_rows[0] + 1
                yield edit.row(tokens(line), int(groups[row]) if row < len(groups) else -1)
        else:
            in_rows = in_rows and kind != END
            if header is not None:
                header.append(text)
            elif kind != ROW_COMMENT or edit is None:
                yield text
    yield "".join(header or [])


def write_updated_star(star: "ParticleStar", dst, cs_mm: dict[int, float],
                       defocus_offset_A: dict[int, float],
                       beam_tilt_mrad: dict[int, tuple[float, float]],
                       even_zernike: dict[int, np.ndarray] | None = None) -> None:
    """``star.path`` written to ``dst`` (atomically) with the refined values.

    Optics rows of refined groups get the new rlnSphericalAberration (and rlnBeamTiltX/Y where
    present, and rlnEvenZernike where ``even_zernike`` has the group: the column is added, with
    ``[]`` for the other groups, where the input has none); particle rows of those groups get
    rlnDefocusU/V + offset. In a file without an optics table (RELION 3.0) the particle rows
    get the new Cs and beam tilt. Cs and beam tilt are written with nine decimals, defocus with
    six, Zernike coefficients exactly; every other value as its input text (module docstring).
    """
    even_zernike = even_zernike or {}
    optics = _optics_changes(cs_mm, beam_tilt_mrad, even_zernike)
    particles: dict[int, dict[str, str]] = {}
    if not star.optics_table:
        if even_zernike:
            raise ValueError("a particle table without an optics table has no rlnEvenZernike")
        optics, particles = {}, optics
    n_rows = [0]
    with atomic_output(dst) as tmp:
        with open(star.path, "r", encoding="utf-8", errors="surrogateescape") as src, \
                open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as out:
            out.writelines(_output_lines(src, star, optics, particles, defocus_offset_A, n_rows))
        if n_rows[0] != len(star.particles):
            raise InputError(f"{star.path}: read {len(star.particles)} particles but found "
                             f"{n_rows[0]} rows while copying; the file changed or is "
                             f"malformed")


# ----------------------------------------------------------------------------- new files
def _format_value(value) -> str:
    """A new file's value: integers as they are, other numbers with six decimals (as starfile
    and RELION's own writers give them), texts quoted where they must be."""
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.6f}"


def _loop_lines(block: str, columns: dict) -> list[str]:
    """``data_<block>``, its loop header and one line per row of ``columns`` (name -> values
    of equal length), right-aligned in columns as RELION writes them, then a blank line."""
    names = list(columns)
    texts = [[_format_value(v) for v in columns[name]] for name in names]
    widths = [max((len(t) for t in col), default=0) for col in texts]
    lines = [f"data_{block}", "", "loop_"]
    lines += [f"_{name} #{i}" for i, name in enumerate(names, start=1)]
    lines += [" ".join(col[r].rjust(w) for col, w in zip(texts, widths))
              for r in range(len(texts[0]) if texts else 0)]
    return lines + [""]


def new_optics_columns(groups: list[OpticsGroup]) -> dict:
    """The optics table of a new STAR file, column name -> values; aberration columns
    (rlnEvenZernike, rlnOddZernike, rlnMagMat00..11) only where a group has them."""
    columns = {
        "rlnOpticsGroupName": [g.name for g in groups],
        "rlnOpticsGroup": [int(g.optics_group) for g in groups],
        "rlnMicrographPixelSize": [g.pixel_size_A for g in groups],
        "rlnVoltage": [g.voltage_kv for g in groups],
        "rlnSphericalAberration": [g.cs_mm for g in groups],
        "rlnAmplitudeContrast": [g.amplitude_contrast for g in groups],
        "rlnImagePixelSize": [g.pixel_size_A for g in groups],
        "rlnImageSize": [int(g.box_size) for g in groups],
        "rlnImageDimensionality": [2 for _ in groups]}
    for column, attr in (("rlnEvenZernike", "even_zernike"), ("rlnOddZernike", "odd_zernike")):
        if any(np.any(getattr(g, attr) != 0) for g in groups):
            columns[column] = [format_vector(getattr(g, attr)) for g in groups]
    if any(not np.allclose(g.mag_matrix, np.eye(2)) for g in groups):
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
            columns[f"rlnMagMat{i}{j}"] = [float(g.mag_matrix[i, j]) for g in groups]
    return columns


def new_particle_columns(particles: Particles, image_names, micrographs: int = 10,
                         micrograph_names=None) -> dict:
    """The particles table of a new STAR file, column name -> values: ``image_names`` ('N@path',
    one per particle) and the particles' values; ``micrograph_names`` (one per particle: RELION's
    programs group particles by micrograph), or for simulated particles mic000.mrc... cycling
    over ``micrographs``."""
    n = len(particles)
    if micrograph_names is None:
        micrograph_names = [f"mic{i % micrographs:03d}.mrc" for i in range(n)]
    return {
        "rlnImageName": list(image_names),
        "rlnMicrographName": list(micrograph_names),
        "rlnDefocusU": particles.defocus_u_A, "rlnDefocusV": particles.defocus_v_A,
        "rlnDefocusAngle": particles.defocus_angle_deg, "rlnPhaseShift": particles.phase_shift_deg,
        "rlnCtfBfactor": particles.bfactor_A2, "rlnCtfScalefactor": particles.ctf_scale,
        "rlnAngleRot": particles.rot_deg, "rlnAngleTilt": particles.tilt_deg,
        "rlnAnglePsi": particles.psi_deg, "rlnOriginXAngst": particles.origin_x_A,
        "rlnOriginYAngst": particles.origin_y_A,
        "rlnOpticsGroup": np.asarray(particles.optics_group).astype(int).tolist(),
        "rlnRandomSubset": np.asarray(particles.half_set).astype(int).tolist(),
        "rlnClassNumber": [1] * n}


def image_names(stacks, indices) -> list[str]:
    """rlnImageName values 'NNNNNN@stack' (N: the 0-based ``indices`` + 1, as RELION counts
    images); ``stacks``: one path for every particle, or one per particle."""
    if isinstance(stacks, (str, os.PathLike)):
        stacks = [stacks] * len(indices)
    return [f"{int(i) + 1:06d}@{stack}" for i, stack in zip(indices, stacks)]


def write_new_star(path, groups: list[OpticsGroup], particles: Particles, image_names,
                   micrographs: int = 10, micrograph_names=None) -> None:
    """A new RELION 3.1 particle STAR (optics and particles tables), written atomically: the
    tables of :func:`new_optics_columns` and :func:`new_particle_columns`, in RELION's layout
    (``# version 30001``, ``_name #i`` headers, right-aligned rows)."""
    lines = ["", "# version 30001", ""]
    lines += _loop_lines("optics", new_optics_columns(groups)) + [""]
    lines += ["# version 30001", ""]
    lines += _loop_lines("particles", new_particle_columns(particles, image_names, micrographs,
                                                           micrograph_names))
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as fh:
            fh.write("\n".join(lines) + "\n")
