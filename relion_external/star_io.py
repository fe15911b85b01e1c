"""Read and write RELION 3.1+ particle STAR files for csrefine.

Reading and writing share one line parser (:func:`_loop_rows`, :func:`_tokens`). Reading keeps
only the columns the refinement needs, as text and then arrays, in one pass over the file:
memory grows by about a hundred bytes per particle, not by the size of the table, and neither
pandas nor starfile is imported (their import is ~0.3-0.6 s, a fifth of a small run). Writing
streams the *input file's text* and replaces only the tokens that change (Cs and beam tilt of
refined optics groups, defocus U/V of their particles), so every other table, column, row, value
and its formatting is preserved byte for byte. New files (:func:`write_new_star`) and other STAR
files (:func:`read_blocks`) go through starfile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csrefine.errors import InputError, shown
from csrefine.io_atomic import atomic_output
from csrefine.model import OpticsGroup, Particles, check_optics_values
from csrefine.paths import check_input_file

REQUIRED_OPTICS = ("rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration",
                   "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize")
REQUIRED_PARTICLES = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnAngleRot",
                      "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                      "rlnRandomSubset")
MAG_COLUMNS = ("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11")
#: The optics table's column of each quantity checked by csrefine.model.check_optics_values.
OPTICS_COLUMN_NAMES = {"voltage_kv": "_rlnVoltage", "cs_mm": "_rlnSphericalAberration",
                       "amplitude_contrast": "_rlnAmplitudeContrast",
                       "pixel_size_A": "_rlnImagePixelSize", "box_size": "_rlnImageSize"}


@dataclass
class ParticleStar:
    """A parsed particle STAR file.

    groups : optics groups by rlnOpticsGroup number; particles : per-particle parameters in file
    order; stack_paths : the distinct stack files named in rlnImageName; stack_code : (n,) index
    into stack_paths per particle; image_index : (n,) 0-based image number within its stack.
    """

    path: Path
    groups: dict[int, OpticsGroup]
    particles: Particles
    stack_paths: list = field(default_factory=list)
    stack_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    image_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _column_names(path: Path) -> list[str]:
    names = []
    with open(path, "r", errors="replace") as fh:
        for line in fh:
            m = re.match(r"\s*_(\S+)", line)
            if m:
                names.append(m.group(1))
    return sorted(set(names))


def read_blocks(path) -> dict:
    """All data blocks of a STAR file with every value kept as text (starfile: pandas
    DataFrames for loops, dicts for key-value blocks)."""
    import starfile

    path = check_input_file(path, "STAR file")
    try:
        return starfile.read(path, always_dict=True, parse_as_string=_column_names(path))
    except Exception as exc:  # starfile raises assorted parser errors
        raise InputError(f"{path}: not a readable STAR file ({exc})") from exc


#: Rows after which a numeric column's text is converted to numbers while reading: a
#: million-row file never holds more than this many texts per numeric column.
CHUNK_ROWS = 65536


class NumericColumn:
    """A column read as numbers, converted every :data:`CHUNK_ROWS` rows; remembers the first
    value that is not a finite number (row, text) for the error message."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.pending: list[str] = []
        self.rows = 0
        self.first_bad: tuple[int, str] | None = None

    def append(self, text: str) -> None:
        self.pending.append(text)
        if len(self.pending) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values, bad = to_numbers(self.pending)
        if bad >= 0 and self.first_bad is None:
            self.first_bad = (self.rows + bad, self.pending[bad])
        self.chunks.append(values)
        self.rows += len(self.pending)
        self.pending = []

    def values(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0)


def to_numbers(texts: list[str]) -> tuple[np.ndarray, int]:
    """(float64 values, NaN where a text is no number; the first row whose value is not a finite
    number, or -1)."""
    try:
        values = np.array(texts, dtype=np.float64)
    except ValueError:
        values = np.array([_number_or_nan(t) for t in texts])
    finite = np.isfinite(values)
    return values, (-1 if finite.all() else int(np.flatnonzero(~finite)[0]))


def _number_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


@dataclass
class Table:
    """A loop of a STAR file: the kept columns in row order, as text (list of str) or, for the
    columns read as numbers, a :class:`NumericColumn`."""

    columns: dict
    n_rows: int
    all_columns: tuple[str, ...] = ()

    def __contains__(self, column: str) -> bool:
        return column in self.columns

    def __getitem__(self, column: str):
        return self.columns[column]

    def __len__(self) -> int:
        return self.n_rows


def read_loops(path: Path, keep: dict[str, tuple[str, ...] | None],
               numeric: dict[str, tuple[str, ...]] | None = None):
    """The loops of the blocks named in ``keep`` (block -> the columns to keep, None: all), in
    one pass over the file with the writer's parser; the columns named in ``numeric`` (block ->
    columns) are converted to numbers as they are read (:class:`NumericColumn`), the others
    kept as text. Returns (tables by block, the names of the file's blocks in order); a loop
    whose header has no rows is an empty table. InputError naming the file and line for a row
    whose number of values is not the loop's number of columns, for a kept block that appears
    twice and for one with two loops."""
    numeric = numeric or {}
    tables: dict[str, Table] = {}
    blocks: list[str] = []
    current, wanted, seen_columns = None, None, None
    with open(path, "r", errors="replace", newline="") as fh:
        for number, (block, columns, line, is_row) in enumerate(_loop_rows(fh), start=1):
            if not is_row and line.lstrip().startswith("data_"):  # a block starts
                if block in keep and block in blocks:
                    raise InputError(f"{path}: data_{block} appears twice (line {number})")
                blocks.append(block)
            if block not in keep or not columns:
                continue
            if columns is not seen_columns:  # a loop: its header, then its rows
                if block in tables:
                    raise InputError(f"{path}: data_{block} has more than one loop "
                                     f"(line {number})")
                current = tables[block] = Table({}, 0)
                seen_columns, wanted = columns, None
            if not is_row:
                continue
            if wanted is None:  # the header is complete at the first row
                names = keep[block]
                wanted = [(i, c) for i, c in enumerate(columns) if names is None or c in names]
                current.all_columns = tuple(columns)
                current.columns = {c: NumericColumn() if c in numeric.get(block, ()) else []
                                   for _, c in wanted}
            tokens = _tokens(line)
            if len(tokens) != len(columns):
                raise InputError(f"{path}: line {number} of data_{block} has {len(tokens)} "
                                 f"values for its {len(columns)} columns")
            for i, c in wanted:
                current.columns[c].append(tokens[i])
            current.n_rows += 1
    return tables, blocks


def numeric_column(table: Table, column: str, where: str, default=None) -> np.ndarray:
    """Column as float64, or ``default`` if absent; InputError naming file/column/row on bad values."""
    if column not in table:
        if default is None:
            raise InputError(f"{where}: missing column _{column}")
        return np.full(len(table), float(default))
    data = table[column]
    if isinstance(data, NumericColumn):
        values, bad = data.values(), data.first_bad
    else:
        values, row = to_numbers(data)
        bad = (row, data[row]) if row >= 0 else None
    if bad is not None:
        raise InputError(f"{where}: _{column} has a non-numeric or non-finite value "
                         f"{shown(bad[1])} in row {bad[0] + 1}")
    return values


def integer_column(table: Table, column: str, where: str) -> np.ndarray:
    """A required column of whole numbers as int64; InputError naming file/column/row/value on
    a fractional value (never truncated)."""
    values = numeric_column(table, column, where)
    fractional = values != np.round(values)
    if fractional.any():
        row = int(np.flatnonzero(fractional)[0])
        data = table[column]
        text = data[row] if isinstance(data, list) else f"{values[row]:g}"
        raise InputError(f"{where}: _{column} must be a whole number, got "
                         f"{shown(text)} in row {row + 1}")
    return values.astype(np.int64)


def parse_vector(text: str, where: str) -> np.ndarray:
    """RELION vector cell such as '[0.1,0.2]' -> float array."""
    body = str(text).strip().strip("[]").strip()
    if not body:
        return np.zeros(0)
    try:
        values = np.array([float(v) for v in body.split(",")])
    except ValueError:
        raise InputError(f"{where}: cannot read vector {text!r}") from None
    if not np.all(np.isfinite(values)):
        raise InputError(f"{where}: vector {text!r} has non-finite values")
    return values


def _optics_groups(optics: Table, where: str) -> dict[int, OpticsGroup]:
    for column in REQUIRED_OPTICS:
        if column not in optics:
            raise InputError(f"{where}: optics table lacks _{column}")
    if "rlnCtfDataAreCtfPremultiplied" in optics:
        flags = numeric_column(optics, "rlnCtfDataAreCtfPremultiplied", where)
        if np.any(flags != 0):
            raise InputError(f"{where}: _rlnCtfDataAreCtfPremultiplied is set: csrefine needs "
                             f"images that are not pre-multiplied by the CTF")
    ids = integer_column(optics, "rlnOpticsGroup", where)
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise InputError(f"{where}: optics group {int(unique[counts > 1][0])} appears in "
                         f"{int(counts[counts > 1][0])} rows of the optics table (_rlnOpticsGroup "
                         f"must be unique)")
    if np.any(ids < 1):
        raise InputError(f"{where}: _rlnOpticsGroup must be at least 1, got {int(ids.min())}")
    num = {c: numeric_column(optics, c, where) for c in REQUIRED_OPTICS[1:]}
    tilt_x = numeric_column(optics, "rlnBeamTiltX", where, default=0.0)
    tilt_y = numeric_column(optics, "rlnBeamTiltY", where, default=0.0)
    has_mag = all(c in optics for c in MAG_COLUMNS)
    mags = [numeric_column(optics, c, where) for c in MAG_COLUMNS] if has_mag else None
    groups = {}
    for row, gid in enumerate(ids):
        def vec(column, row=row, gid=gid):
            if column not in optics:
                return np.zeros(0)
            return parse_vector(_unquoted(optics[column][row]),
                                f"{where}: _{column} of optics group {gid}")
        name = (_unquoted(optics["rlnOpticsGroupName"][row]) if "rlnOpticsGroupName" in optics
                else f"opticsGroup{gid}")
        mag = (np.array([[mags[0][row], mags[1][row]], [mags[2][row], mags[3][row]]]) if has_mag
               else np.eye(2))
        check_optics_values(where, f"optics group {int(gid)}", voltage_kv=num["rlnVoltage"][row],
                            cs_mm=num["rlnSphericalAberration"][row],
                            amplitude_contrast=num["rlnAmplitudeContrast"][row],
                            pixel_size_A=num["rlnImagePixelSize"][row],
                            box_size=num["rlnImageSize"][row], names=OPTICS_COLUMN_NAMES)
        groups[int(gid)] = OpticsGroup(
            optics_group=int(gid), name=name, voltage_kv=num["rlnVoltage"][row],
            cs_mm=num["rlnSphericalAberration"][row],
            amplitude_contrast=num["rlnAmplitudeContrast"][row],
            pixel_size_A=num["rlnImagePixelSize"][row], box_size=int(num["rlnImageSize"][row]),
            even_zernike=vec("rlnEvenZernike"), odd_zernike=vec("rlnOddZernike"),
            beam_tilt_x_mrad=tilt_x[row], beam_tilt_y_mrad=tilt_y[row], mag_matrix=mag,
            has_beam_tilt="rlnBeamTiltX" in optics or "rlnBeamTiltY" in optics)
    return groups


def _particles(table: Table, groups: dict[int, OpticsGroup], where: str) -> Particles:
    for column in REQUIRED_PARTICLES:
        if column not in table:
            raise InputError(f"{where}: particles table lacks _{column}")
    if "rlnOpticsGroup" in table:
        og = integer_column(table, "rlnOpticsGroup", where)
    elif len(groups) == 1:
        og = np.full(len(table), next(iter(groups)), dtype=np.int64)
    else:
        raise InputError(f"{where}: particles table lacks _rlnOpticsGroup")
    unknown = sorted(set(np.unique(og)) - set(groups))
    if unknown:
        raise InputError(f"{where}: particles refer to optics group {unknown[0]}, "
                         f"which is not in the optics table")
    half = integer_column(table, "rlnRandomSubset", where)
    if not np.isin(half, (1, 2)).all():
        bad = int(np.flatnonzero(~np.isin(half, (1, 2)))[0])
        raise InputError(f"{where}: _rlnRandomSubset must be 1 or 2, got {half[bad]} in row {bad + 1}")
    col = lambda c, d=None: numeric_column(table, c, where, default=d)  # noqa: E731
    return Particles(
        defocus_u_A=col("rlnDefocusU"), defocus_v_A=col("rlnDefocusV"),
        defocus_angle_deg=col("rlnDefocusAngle", 0.0), phase_shift_deg=col("rlnPhaseShift", 0.0),
        bfactor_A2=col("rlnCtfBfactor", 0.0), ctf_scale=col("rlnCtfScalefactor", 1.0),
        rot_deg=col("rlnAngleRot"), tilt_deg=col("rlnAngleTilt"), psi_deg=col("rlnAnglePsi"),
        origin_x_A=col("rlnOriginXAngst"), origin_y_A=col("rlnOriginYAngst"),
        half_set=half, optics_group=og)


#: The particle columns the refinement reads (the others are copied as text by the writer);
#: all but the image name are numbers.
PARTICLE_COLUMNS = REQUIRED_PARTICLES + ("rlnOpticsGroup", "rlnDefocusAngle", "rlnPhaseShift",
                                         "rlnCtfBfactor", "rlnCtfScalefactor")
NUMERIC_PARTICLE_COLUMNS = tuple(c for c in PARTICLE_COLUMNS if c != "rlnImageName")


def _unquoted(text: str) -> str:
    """A STAR value without the quotes that protect spaces in it."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _image_locations(names: list[str], where: str):
    """rlnImageName 'N@path' -> (distinct paths, code per particle, 0-based index per particle)."""
    split = [_unquoted(name).partition("@") for name in names]
    missing = [i for i, (_, at, stack) in enumerate(split) if not at or not stack]
    if missing:
        row = missing[0]
        raise InputError(f"{where}: _rlnImageName {names[row]!r} (row {row + 1}) is not of "
                         f"the form N@stack")
    numbers = [n for n, _, _ in split]
    bad = [i for i, n in enumerate(numbers) if not (n.isdigit() and int(n) >= 1)]
    if bad:
        row = bad[0]
        raise InputError(f"{where}: _rlnImageName {names[row]!r} (row {row + 1}) has no "
                         f"valid image number (numbers start at 1)")
    uniques: dict[str, int] = {}
    codes = np.array([uniques.setdefault(stack, len(uniques)) for _, _, stack in split],
                     dtype=np.int64)
    return list(uniques), codes, np.array(numbers, dtype=np.int64) - 1


def read_particle_star(path) -> ParticleStar:
    """Read and validate a RELION 3.1+ particle STAR file (optics + particles tables)."""
    path = check_input_file(path, "particle STAR file")
    tables, blocks = read_loops(path, {"optics": None, "particles": PARTICLE_COLUMNS},
                                numeric={"particles": NUMERIC_PARTICLE_COLUMNS})
    for block in ("optics", "particles"):
        if block not in blocks:
            raise InputError(f"{path}: no data_{block} table" + (
                " (RELION 3.1+ particle STAR expected; convert older files with "
                "relion_convert_star)" if block == "optics" else ""))
        if block not in tables:
            raise InputError(f"{path}: data_{block} is not a table (no loop_)")
        if len(tables[block]) == 0:
            raise InputError(f"{path}: data_{block} has no rows")
    optics, table = tables["optics"], tables["particles"]
    groups = _optics_groups(optics, str(path))
    particles = _particles(table, groups, str(path))
    stack_paths, codes, index = _image_locations(table["rlnImageName"], str(path))
    return ParticleStar(path, groups, particles, stack_paths, codes, index)


TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|\S+")


def _tokens(line: str) -> list[str]:
    """The values of a loop row (quoted values kept whole)."""
    return TOKEN.findall(line) if ("'" in line or '"' in line) else line.split()


def _loop_rows(lines):
    """Yield (block name, column names, line, is_data_row) for each line of a STAR file."""
    block, columns, in_loop, header_done = None, [], False, False
    for line in lines:
        text = line.strip()
        if text.startswith("data_"):
            block, columns, in_loop, header_done = text[5:], [], False, False
        elif text == "loop_":
            columns, in_loop, header_done = [], True, False
        elif text.startswith("_") and in_loop and not header_done:
            columns.append(text.split()[0][1:])
        elif in_loop and text and not text.startswith("#"):
            header_done = True
            yield block, columns, line, True
            continue
        yield block, columns, line, False


SEPARATORS = re.compile(r"(\s+)")


def _replace_fields(line: str, replacements: dict[int, str]) -> str:
    """``line`` with the values at the given column positions replaced; every other character
    (separators, tabs, padding, quotes, the line ending) kept as it was."""
    body = line.rstrip("\r\n")
    ending = line[len(body):]
    if "'" in body or '"' in body:
        spans = [m.span() for m in TOKEN.finditer(body)]
        out, last = [], 0
        for i, (start, stop) in enumerate(spans):
            out.append(body[last:start])
            out.append(replacements.get(i, body[start:stop]))
            last = stop
        return "".join(out) + body[last:] + ending
    parts = SEPARATORS.split(body)  # values at even positions, separators between
    lead = 1 if parts and parts[0] == "" else 0
    for i, value in replacements.items():
        parts[lead + 2 * i] = value
    return "".join(parts) + ending


def format_vector(values) -> str:
    """A RELION vector cell, '[a,b,...]', each number exact (shortest round-trip form)."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def write_updated_star(star: ParticleStar, dst, cs_mm: dict[int, float],
                       defocus_offset_A: dict[int, float],
                       beam_tilt_mrad: dict[int, tuple[float, float]],
                       even_zernike: dict[int, np.ndarray] | None = None) -> None:
    """Copy ``star.path`` to ``dst`` (atomically) with the refined values written in.

    Optics rows of refined groups get the new rlnSphericalAberration (and rlnBeamTiltX/Y where
    present, and rlnEvenZernike where ``even_zernike`` has the group); particle rows of those
    groups get rlnDefocusU/V + offset. New numbers are written with six decimals, as RELION does,
    but Cs and beam tilt with nine (a 1e-6 mm step of Cs moves the phase by ~4e-6 rad at 2 Å) and Zernike
    coefficients exactly; every other byte of the input is copied unchanged, line endings (LF
    or CRLF) included.
    """
    even_zernike = even_zernike or {}
    single_group = next(iter(star.groups)) if len(star.groups) == 1 else None
    n_rows = 0
    with atomic_output(dst) as tmp:
        with open(star.path, "r", newline="") as src, open(tmp, "w", newline="") as out:
            col, col_of = {}, None
            for block, columns, line, is_row in _loop_rows(src):
                if not is_row or block not in ("optics", "particles"):
                    out.write(line)
                    continue
                tokens = _tokens(line)
                if col_of is not columns:  # a new loop: its column positions
                    col, col_of = {name: i for i, name in enumerate(columns)}, columns
                gid = int(tokens[col["rlnOpticsGroup"]]) if "rlnOpticsGroup" in col else single_group
                if block == "optics" and gid in cs_mm:
                    new = {col["rlnSphericalAberration"]: f"{cs_mm[gid]:.9f}"}
                    for name, value in zip(("rlnBeamTiltX", "rlnBeamTiltY"), beam_tilt_mrad.get(gid, ())):
                        if name in col:
                            new[col[name]] = f"{value:.9f}"
                    if gid in even_zernike and "rlnEvenZernike" in col:
                        new[col["rlnEvenZernike"]] = format_vector(even_zernike[gid])
                    line = _replace_fields(line, new)
                elif block == "particles":
                    n_rows += 1
                    if gid in defocus_offset_A:
                        line = _replace_fields(line, {
                            col[name]: f"{float(tokens[col[name]]) + defocus_offset_A[gid]:.6f}"
                            for name in ("rlnDefocusU", "rlnDefocusV")})
                out.write(line)
        if n_rows != len(star.particles):
            raise InputError(f"{star.path}: read {len(star.particles)} particles but found "
                             f"{n_rows} rows while copying; the file changed or is malformed")


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
