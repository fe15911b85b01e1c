"""Read RELION particle STAR files for csrefine; write them with :mod:`.star_write`.

:func:`read_particle_star` reads the optics and particles tables in one pass over the file with
the writer's own tokenizer (:mod:`.star_syntax`), keeping only the columns the refinement needs
(:mod:`.star_tables`): neither pandas nor starfile is imported, values containing ``#`` and
quotes are read as RELION reads them. The same reader reads PostProcess STAR files
(:func:`csrefine.relion.star_tables.key_values`).

Particle tables without an optics table (RELION 3.0's layout, e.g. ``relion_preprocess`` and
``relion_refine`` of that version) state each particle's optics. The optics groups are then the
distinct combinations of rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast, pixel size
and rlnBeamTiltX/Y, numbered in order of first appearance (as RELION 3.1 forms and numbers them
when it converts such a file). The pixel size is rlnDetectorPixelSize (µm) * 1e4 /
rlnMagnification where both are given (RELION 3.1 converts only such files), else
rlnImagePixelSize or rlnPixelSize; origins are rlnOriginX/Y in pixels (rlnOriginXAngst/YAngst
where present); the box size comes from the stack header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csrefine.errors import InputError
from csrefine.images import check_mrc_header
from csrefine.model import OpticsGroup, Particles, check_optics_values
from csrefine.paths import check_input_file

from .star_syntax import unquoted
from .star_tables import CHUNK_ROWS, Table, integer_column, numeric_column, parse_vector, read_tables
from .star_write import format_vector, write_new_star, write_updated_star

__all__ = ["ParticleStar", "read_particle_star", "write_updated_star", "write_new_star",
           "format_vector"]

REQUIRED_PARTICLES = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnAngleRot",
                      "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                      "rlnRandomSubset")
MAG_COLUMNS = ("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11")
#: The optics table's column of each quantity checked by csrefine.model.check_optics_values.
OPTICS_COLUMN_NAMES = {"voltage_kv": "_rlnVoltage", "cs_mm": "_rlnSphericalAberration",
                       "amplitude_contrast": "_rlnAmplitudeContrast",
                       "pixel_size_A": "_rlnImagePixelSize", "box_size": "_rlnImageSize"}
REQUIRED_OPTICS = ("rlnOpticsGroup", *(name[1:] for name in OPTICS_COLUMN_NAMES.values()))
#: The particle columns the refinement reads (the writer copies the others as text); all but
#: the image name are numbers.
PARTICLE_COLUMNS = REQUIRED_PARTICLES + ("rlnOpticsGroup", "rlnDefocusAngle", "rlnPhaseShift",
                                         "rlnCtfBfactor", "rlnCtfScalefactor")
TILT_COLUMNS = ("rlnBeamTiltX", "rlnBeamTiltY")
#: The optics RELION 3.0's layout states per particle; the reader keeps them and its pixel
#: size and origin columns too.
PARTICLE_OPTICS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
KEPT_PARTICLE_COLUMNS = PARTICLE_COLUMNS + PARTICLE_OPTICS + (
    "rlnDetectorPixelSize", "rlnMagnification", "rlnImagePixelSize", "rlnPixelSize",
    *TILT_COLUMNS, "rlnOriginX", "rlnOriginY")


@dataclass
class ParticleStar:
    """A parsed particle STAR file.

    groups : optics groups by rlnOpticsGroup number; particles : per-particle parameters in file
    order; stack_paths : the distinct stack files named in rlnImageName; stack_code : (n,) index
    into stack_paths per particle; image_index : (n,) 0-based image number within its stack;
    particle_block : the name of the particles' data block; optics_table : whether the file has
    a data_optics table (False: RELION 3.0's layout, the optics stated per particle); text :
    the ``text_columns`` asked of :func:`read_particle_star` that the file has, their values
    per particle, unquoted.
    """

    path: Path
    groups: dict[int, OpticsGroup]
    particles: Particles
    stack_paths: list
    stack_code: np.ndarray
    image_index: np.ndarray
    particle_block: str
    optics_table: bool
    text: dict = field(default_factory=dict)


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
    num = {quantity: numeric_column(optics, column[1:], where)
           for quantity, column in OPTICS_COLUMN_NAMES.items()}
    tilt_x, tilt_y = (numeric_column(optics, c, where, default=0.0) for c in TILT_COLUMNS)
    mags = ([numeric_column(optics, c, where) for c in MAG_COLUMNS]
            if all(c in optics for c in MAG_COLUMNS) else None)
    vectors = {c: optics[c] if c in optics else None for c in ("rlnEvenZernike", "rlnOddZernike")}
    groups = {}
    for row, gid in enumerate(ids.tolist()):
        name = (unquoted(optics["rlnOpticsGroupName"][row]) if "rlnOpticsGroupName" in optics
                else f"opticsGroup{gid}")
        mag = np.array([m[row] for m in mags]).reshape(2, 2) if mags else np.eye(2)
        values = {quantity: column[row] for quantity, column in num.items()}
        check_optics_values(where, f"optics group {gid}", names=OPTICS_COLUMN_NAMES, **values)
        terms = {c: parse_vector(unquoted(texts[row]), f"{where}: _{c} of optics group {gid}")
                 if texts is not None else np.zeros(0) for c, texts in vectors.items()}
        groups[gid] = OpticsGroup(
            optics_group=gid, name=name, **dict(values, box_size=int(values["box_size"])),
            even_zernike=terms["rlnEvenZernike"], odd_zernike=terms["rlnOddZernike"],
            beam_tilt_x_mrad=tilt_x[row], beam_tilt_y_mrad=tilt_y[row], mag_matrix=mag,
            has_beam_tilt=any(c in optics for c in TILT_COLUMNS))
    return groups


def _group_numbers(table: Table, groups: dict[int, OpticsGroup], where: str) -> np.ndarray:
    """Each particle's optics group (rlnOpticsGroup; may be absent with one group)."""
    if "rlnOpticsGroup" in table:
        og = integer_column(table, "rlnOpticsGroup", where)
    elif len(groups) == 1:
        og = np.full(len(table), next(iter(groups)), dtype=np.int64)
    else:
        raise InputError(f"{where}: particles table lacks _rlnOpticsGroup")
    unknown = sorted(set(np.unique(og).tolist()) - set(groups))
    if unknown:
        raise InputError(f"{where}: particles refer to optics group {unknown[0]}, "
                         f"which is not in the optics table")
    return og


def _particles(table: Table, og: np.ndarray, origins, where: str) -> Particles:
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
        origin_x_A=origins[0], origin_y_A=origins[1], half_set=half, optics_group=og)


def _pixel_sizes_A(table: Table, where: str) -> tuple[np.ndarray, str]:
    """Each particle's pixel size (Å) and the column(s) it comes from."""
    if "rlnDetectorPixelSize" in table and "rlnMagnification" in table:
        detector_um = numeric_column(table, "rlnDetectorPixelSize", where)
        magnification = numeric_column(table, "rlnMagnification", where)
        with np.errstate(divide="ignore", invalid="ignore"):
            return detector_um * 1e4 / magnification, "_rlnDetectorPixelSize/_rlnMagnification"
    for column in ("rlnImagePixelSize", "rlnPixelSize"):
        if column in table:
            return numeric_column(table, column, where), f"_{column}"
    raise InputError(f"{where}: no data_optics table, and data_{table.block} states no pixel "
                     f"size (_rlnDetectorPixelSize and _rlnMagnification, _rlnImagePixelSize or "
                     f"_rlnPixelSize)")


def _origins_A(table: Table, where: str, pixel_size_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origins in Å: rlnOriginXAngst/YAngst, or rlnOriginX/Y (pixels) times the pixel size."""
    if "rlnOriginXAngst" in table or "rlnOriginX" not in table:
        return (numeric_column(table, "rlnOriginXAngst", where),
                numeric_column(table, "rlnOriginYAngst", where))
    return (numeric_column(table, "rlnOriginX", where) * pixel_size_A,
            numeric_column(table, "rlnOriginY", where) * pixel_size_A)


def _relion30_groups(table: Table, where: str, stacks: list[Path], codes: np.ndarray):
    """(optics groups by number, each particle's group number, each particle's pixel size in
    Å) of a table that states the optics per particle; the box size is that of the stack
    ``stacks[codes[row]]`` of each group's first particle."""
    for column in PARTICLE_OPTICS:
        if column not in table:
            raise InputError(f"{where}: no data_optics table, and data_{table.block} does not "
                             f"state the optics per particle (no _{column})")
    voltage, cs, q0 = (numeric_column(table, c, where) for c in PARTICLE_OPTICS)
    pixel, pixel_names = _pixel_sizes_A(table, where)
    tilt_x, tilt_y = (numeric_column(table, c, where, default=0.0) for c in TILT_COLUMNS)
    keys = np.stack([voltage, cs, q0, pixel, tilt_x, tilt_y], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # the groups in order of first appearance
    number = np.empty(len(order), dtype=np.int64)
    number[order] = np.arange(1, len(order) + 1)
    names = dict(OPTICS_COLUMN_NAMES, pixel_size_A=pixel_names, box_size="the stack's box size")
    groups = {}
    for gid, row in enumerate(first[order].tolist(), start=1):
        box = _stack_box(stacks[codes[row]], where)
        check_optics_values(where, f"row {row + 1} (optics group {gid})", voltage_kv=voltage[row],
                            cs_mm=cs[row], amplitude_contrast=q0[row], pixel_size_A=pixel[row],
                            box_size=box, names=names)
        groups[gid] = OpticsGroup(
            gid, f"opticsGroup{gid}", float(voltage[row]), float(cs[row]), float(q0[row]),
            float(pixel[row]), int(box), beam_tilt_x_mrad=float(tilt_x[row]),
            beam_tilt_y_mrad=float(tilt_y[row]),
            has_beam_tilt=any(c in table for c in TILT_COLUMNS))
    return groups, number[np.ravel(inverse)], pixel


#: Image numbers above this are refused (no stack holds a billion images).
MAX_IMAGE_NUMBER = 10**9


def _image_locations(names: list[str], where: str):
    """rlnImageName 'N@path' -> (distinct paths, code per particle, 0-based index per particle),
    in chunks of CHUNK_ROWS names (a million names split at once would hold three million
    strings)."""
    uniques: dict[str, int] = {}
    codes, numbers = [], []
    for start in range(0, len(names), CHUNK_ROWS):
        split = [unquoted(name).partition("@") for name in names[start:start + CHUNK_ROWS]]
        digits = [n for n, _, _ in split]
        if not (all(at and stack for _, at, stack in split) and "".join(digits).isascii()
                and all(n.isdigit() and len(n) <= 10 for n in digits)):
            _bad_image_name(names, start, where)
        codes += [uniques.setdefault(stack, len(uniques)) for _, _, stack in split]
        numbers.append(np.array(list(map(int, digits)), dtype=np.int64))
    index = np.concatenate(numbers)  # the table has rows
    if not (index.min() >= 1 and index.max() <= MAX_IMAGE_NUMBER):
        _bad_image_name(names, 0, where)
    return list(uniques), np.array(codes, dtype=np.int64), index - 1


def _bad_image_name(names: list[str], start: int, where: str):
    """InputError naming the first image name from ``start`` on that is not 'N@stack'."""
    for row in range(start, len(names)):
        number, at, stack = unquoted(names[row]).partition("@")
        if not at or not stack:
            raise InputError(f"{where}: _rlnImageName {names[row]!r} (row {row + 1}) is not of "
                             f"the form N@stack")
        if not (number.isascii() and number.isdigit() and len(number) <= 10
                and 1 <= int(number) <= MAX_IMAGE_NUMBER):
            raise InputError(f"{where}: _rlnImageName {names[row]!r} (row {row + 1}) has no "
                             f"valid image number (numbers start at 1 and stay below "
                             f"{MAX_IMAGE_NUMBER:.0e})")


def _stack_box(path: Path, where: str) -> int:
    """The box size in the header of a particle stack."""
    nx, ny, _, _ = check_mrc_header(path, f"particle stack (its box size is needed: {where} has "
                                          f"no optics table)")
    if nx != ny:
        raise InputError(f"{path}: images of {nx} x {ny} pixels; square images expected")
    return nx


def _tables(path: Path, text_columns: tuple = ()):
    """(optics table or None, particle table) of a particle STAR, or InputError. Read are the
    optics table (all columns, as text), and the refinement's columns and ``text_columns`` of
    data_particles or, in a file without it, of the first loop with _rlnImageName."""
    candidates = []

    def choose(block, labels):
        if block == "optics":
            return tuple(labels), frozenset()
        if block == "particles" or ("rlnImageName" in labels and not candidates):
            candidates.append(block)
            return (KEPT_PARTICLE_COLUMNS + tuple(text_columns),
                    frozenset(KEPT_PARTICLE_COLUMNS) - {"rlnImageName"})
        return None

    tables, blocks = read_tables(path, choose)
    if "optics" not in blocks:
        table = tables.get("particles") or next(
            (t for t in tables.values() if "rlnImageName" in t.labels), None)
        if table is None:
            raise InputError(f"{path}: no data_optics table (RELION 3.1+) and no particle "
                             f"table (a loop with _rlnImageName)")
        if len(table) == 0:
            raise InputError(f"{path}: data_{table.block} has no rows")
        return None, table
    for block in ("optics", "particles"):
        if block not in blocks:
            raise InputError(f"{path}: no data_{block} table")
        if block not in tables:
            raise InputError(f"{path}: data_{block} is not a table (no loop_)")
        if len(tables[block]) == 0:
            raise InputError(f"{path}: data_{block} has no rows")
    return tables["optics"], tables["particles"]


def read_particle_star(path, base_dir=".", text_columns: tuple = ()) -> ParticleStar:
    """Read and validate a RELION particle STAR file: RELION 3.1+ (optics and particles
    tables) or RELION 3.0 (one particle table stating the optics per particle; the box size is
    then read from the header of the stacks, whose paths are relative to ``base_dir``).
    ``text_columns``: particle columns to keep as text too (:attr:`ParticleStar.text`)."""
    path = check_input_file(path, "particle STAR file")
    where = str(path)
    optics, table = _tables(path, text_columns)
    for column in REQUIRED_PARTICLES:
        if column not in table and not (optics is None and column.startswith("rlnOrigin")):
            raise InputError(f"{where}: particles table lacks _{column}")
    stack_paths, codes, index = _image_locations(table["rlnImageName"], where)
    if optics is not None:
        groups = _optics_groups(optics, where)
        og = _group_numbers(table, groups, where)
        origins = _origins_A(table, where, None)
    else:
        groups, og, pixel = _relion30_groups(
            table, where, [Path(base_dir) / p for p in stack_paths], codes)
        origins = _origins_A(table, where, pixel)
    particles = _particles(table, og, origins, where)
    text = {c: [unquoted(v) for v in table[c]] for c in text_columns if c in table}
    return ParticleStar(path, groups, particles, stack_paths, codes, index, table.block,
                        optics is not None, text)
