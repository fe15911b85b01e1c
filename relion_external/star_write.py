"""Write particle STAR files for RELION: the input with refined values, and new files.

:func:`write_updated_star` re-emits the rows of the input's optics and particle tables from
their values (:func:`csrefine.relion.star_syntax.tokens`): every value that does not change is
copied as its exact text, the changed ones are formatted, and the values of a row are joined by
single spaces. RELION needs the values, not the input's padding, so the output is the same for
any layout of the input (right- or left-aligned, tabs, quotes, CRLF). Every other line (header,
comments, other blocks) is copied, with LF line ends (RELION 3.1.3 reads no table of a CRLF
file). Comment lines among a table's rows are left out (RELION refuses them), and a table's
rows are followed by a blank line (RELION reads a ``data_`` right after a row as a row).

New files (:func:`write_new_star`) are written by starfile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from csrefine.errors import InputError
from csrefine.io_atomic import atomic_output
from csrefine.model import OpticsGroup, Particles

from .star_syntax import DATA, END, LOOP, ROW, ROW_COMMENT, star_lines, tokens

if TYPE_CHECKING:
    from .star_io import ParticleStar

#: A vector column a refined optics table may need where the input has none, and the value of
#: the groups without one (no terms).
EVEN_ZERNIKE = "rlnEvenZernike"
NO_TERMS = "[]"


def format_vector(values) -> str:
    """A RELION vector value, '[a,b,...]', each number exact (shortest round-trip form)."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def format_cs_mm(value: float) -> str:
    """Cs and beam tilt with nine decimals (a 1e-6 mm step of Cs moves the phase by ~4e-6 rad
    at 2 Å)."""
    return f"{value:.9f}"


def format_defocus_A(value: float) -> str:
    return f"{value:.6f}"


class _TableEdit:
    """The new values of one table's rows: per optics group, (column position, new text) and
    the defocus offset; and the values of the columns the table gains."""

    def __init__(self, labels: list, changes: dict[int, dict[str, str]],
                 defocus_offset_A: dict[int, float], added: dict[str, str], optics: bool):
        self.labels, self.optics = labels, optics
        self.position = {name: i for i, name in enumerate(labels)}
        self.changes = {gid: [(self.position[c], text) for c, text in new.items()
                              if c in self.position] for gid, new in changes.items()}
        self.offsets = {gid: offset for gid, offset in defocus_offset_A.items() if offset != 0}
        self.defocus = [self.position[c] for c in ("rlnDefocusU", "rlnDefocusV")
                        if c in self.position and self.offsets]
        self.added = {gid: [new.get(c, text) for c, text in added.items()]
                      for gid, new in changes.items()}
        self.unchanged_added = list(added.values())

    def row(self, values: list[str], gid: int) -> str:
        for i, text in self.changes.get(gid, ()):
            values[i] = text
        offset = self.offsets.get(gid)
        if offset is not None:
            for i in self.defocus:
                values[i] = format_defocus_A(float(values[i]) + offset)
        if self.unchanged_added:
            values += self.added.get(gid, self.unchanged_added)
        return " ".join(values) + "\n"


def _optics_changes(cs_mm, beam_tilt_mrad, even_zernike) -> dict[int, dict[str, str]]:
    """Column -> new text, per refined optics group."""
    changes: dict[int, dict[str, str]] = {}
    for gid, cs in cs_mm.items():
        new = changes.setdefault(gid, {})
        new["rlnSphericalAberration"] = format_cs_mm(cs)
        for name, value in zip(("rlnBeamTiltX", "rlnBeamTiltY"), beam_tilt_mrad.get(gid, ())):
            new[name] = format_cs_mm(value)
    for gid, terms in even_zernike.items():
        changes.setdefault(gid, {})[EVEN_ZERNIKE] = format_vector(terms)
    return changes


class _Writer:
    """The output text for each line of the input (see the module docstring)."""

    def __init__(self, star: "ParticleStar", optics: dict, particles: dict,
                 defocus_offset_A: dict):
        self.star, self.optics, self.particles = star, optics, particles
        self.offsets = defocus_offset_A
        self.header: list[str] | None = None  # a loop's lines from loop_ to its first row
        self.edit: _TableEdit | None = None  # the current loop's, None: its rows are copied
        self.groups = star.particles.optics_group
        self.in_rows, self.n_rows = False, 0

    def __call__(self, kind: str, block: str | None, labels: list, line: str) -> str:
        text = line if line.endswith("\n") else line + "\n"
        if kind in (DATA, LOOP):
            out = self.finish() + ("\n" if self.in_rows else "")
            self.in_rows, self.edit = False, None
            if kind == LOOP:
                self.header = [text]
                return out
            return out + text
        if kind == ROW:
            out = self._open(block, labels) if self.header is not None else ""
            self.in_rows = True
            return out + (self._row(line) if self.edit is not None else text)
        self.in_rows = self.in_rows and kind != END
        if self.header is not None:
            self.header.append(text)
            return ""
        return "" if kind == ROW_COMMENT and self.edit is not None else text

    def finish(self) -> str:
        """The held header of a loop that has no rows."""
        header, self.header = self.header or [], None
        return "".join(header)

    def _open(self, block: str | None, labels: list) -> str:
        """At a loop's first row: whether and how its rows change; its header."""
        header, self.header = self.header, None
        optics = self.star.optics_table and block == "optics"
        if optics:
            changes, offsets = self.optics, {}
        elif block == self.star.particle_block and "rlnImageName" in labels:
            changes, offsets = self.particles, self.offsets
        else:
            return "".join(header)
        added = {}
        if any(EVEN_ZERNIKE in new for new in changes.values()) and EVEN_ZERNIKE not in labels:
            added = {EVEN_ZERNIKE: NO_TERMS}
            last = max(i for i, t in enumerate(header) if t.lstrip().startswith("_"))
            header[last + 1:last + 1] = [f"_{name} #{len(labels) + i + 1}\n"
                                         for i, name in enumerate(added)]
        self.edit = _TableEdit(labels, changes, offsets, added, optics)
        return "".join(header)

    def _row(self, line: str) -> str:
        values = tokens(line)
        if self.edit.optics:
            gid = int(float(values[self.edit.position["rlnOpticsGroup"]]))
        else:
            gid = int(self.groups[self.n_rows]) if self.n_rows < len(self.groups) else -1
            self.n_rows += 1
        return self.edit.row(values, gid)


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
    writer = _Writer(star, optics, particles, defocus_offset_A)
    with atomic_output(dst) as tmp:
        with open(star.path, "r", encoding="utf-8", errors="surrogateescape") as src, \
                open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as out:
            for _, kind, block, labels, line in star_lines(src):
                out.write(writer(kind, block, labels, line))
            out.write(writer.finish())
        if writer.n_rows != len(star.particles):
            raise InputError(f"{star.path}: read {len(star.particles)} particles but found "
                             f"{writer.n_rows} rows while copying; the file changed or is "
                             f"malformed")


# ----------------------------------------------------------------------------- new tables
def particle_table(particles: Particles, stack: str | None, micrographs: int = 10,
                   image_names=None):
    """The particles table of a new STAR file: images ``N@stack`` in order, or ``image_names``
    (one 'N@path' per particle)."""
    import pandas as pd

    n = len(particles)
    names = (list(image_names) if image_names is not None
             else [f"{i + 1:06d}@{stack}" for i in range(n)])
    return pd.DataFrame({
        "rlnImageName": names,
        "rlnMicrographName": [f"mic{i % micrographs:03d}.mrc" for i in range(n)],
        "rlnDefocusU": particles.defocus_u_A, "rlnDefocusV": particles.defocus_v_A,
        "rlnDefocusAngle": particles.defocus_angle_deg, "rlnPhaseShift": particles.phase_shift_deg,
        "rlnCtfBfactor": particles.bfactor_A2, "rlnCtfScalefactor": particles.ctf_scale,
        "rlnAngleRot": particles.rot_deg, "rlnAngleTilt": particles.tilt_deg,
        "rlnAnglePsi": particles.psi_deg, "rlnOriginXAngst": particles.origin_x_A,
        "rlnOriginYAngst": particles.origin_y_A, "rlnOpticsGroup": particles.optics_group,
        "rlnRandomSubset": particles.half_set,
        "rlnClassNumber": np.ones(n, dtype=int)})


def optics_table(groups: list[OpticsGroup]):
    """The optics table of a new STAR file (a pandas DataFrame); aberration columns
    (rlnEvenZernike, rlnOddZernike, rlnMagMat00..11) only where a group has them."""
    import pandas as pd

    table = pd.DataFrame({
        "rlnOpticsGroupName": [g.name for g in groups],
        "rlnOpticsGroup": [g.optics_group for g in groups],
        "rlnMicrographPixelSize": [g.pixel_size_A for g in groups],
        "rlnVoltage": [g.voltage_kv for g in groups],
        "rlnSphericalAberration": [g.cs_mm for g in groups],
        "rlnAmplitudeContrast": [g.amplitude_contrast for g in groups],
        "rlnImagePixelSize": [g.pixel_size_A for g in groups],
        "rlnImageSize": [g.box_size for g in groups],
        "rlnImageDimensionality": [2 for _ in groups]})
    for column, attr in (("rlnEvenZernike", "even_zernike"), ("rlnOddZernike", "odd_zernike")):
        if any(np.any(getattr(g, attr) != 0) for g in groups):
            table[column] = [format_vector(getattr(g, attr)) for g in groups]
    if any(not np.allclose(g.mag_matrix, np.eye(2)) for g in groups):
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
            table[f"rlnMagMat{i}{j}"] = [float(g.mag_matrix[i, j]) for g in groups]
    return table


def write_new_star(path, groups: list[OpticsGroup], particles: Particles, image_names) -> None:
    """A new RELION 3.1 particle STAR (optics and particles tables), written atomically."""
    import starfile

    with atomic_output(path) as tmp:
        starfile.write({"optics": optics_table(groups),
                        "particles": particle_table(particles, None, image_names=image_names)},
                       tmp, overwrite=True)
