"""Read and write RELION 3.1+ particle STAR files for csrefine.

Every column is read as text (starfile's ``parse_as_string``) so that tables and columns csrefine
does not change are written back exactly as they were; only the columns it needs are converted
to numbers, with errors that name the file, the column and the row.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from plugin.errors import InputError
from plugin.model import OpticsGroup, Particles

REQUIRED_OPTICS = ("rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration",
                   "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize")
REQUIRED_PARTICLES = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnAngleRot",
                      "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                      "rlnRandomSubset")
MAG_COLUMNS = ("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11")


@dataclass
class ParticleStar:
    """A particle STAR file: every block as text, plus the parsed optics groups and particles.

    blocks : the file's data blocks (name -> DataFrame of str, or dict for simple blocks).
    groups : optics groups by rlnOpticsGroup number.
    particles : per-particle parameters in file order.
    image_names : rlnImageName per particle ("N@stack").
    """

    path: Path
    blocks: dict
    groups: dict[int, OpticsGroup]
    particles: Particles
    image_names: np.ndarray

    @property
    def optics(self) -> pd.DataFrame:
        return self.blocks["optics"]

    @property
    def table(self) -> pd.DataFrame:
        return self.blocks["particles"]


def _column_names(path: Path) -> list[str]:
    names = []
    with open(path, "r", errors="replace") as fh:
        for line in fh:
            m = re.match(r"\s*_(\S+)", line)
            if m:
                names.append(m.group(1))
    return sorted(set(names))


def read_blocks(path) -> dict:
    """All data blocks of a STAR file with every value kept as text."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such STAR file")
    try:
        return starfile.read(path, always_dict=True, parse_as_string=_column_names(path))
    except Exception as exc:  # starfile raises assorted parser errors
        raise InputError(f"{path}: not a readable STAR file ({exc})") from exc


def numeric_column(table: pd.DataFrame, column: str, where: str, default=None) -> np.ndarray:
    """Column as float64, or ``default`` if absent; InputError naming file/column/row on bad values."""
    if column not in table.columns:
        if default is None:
            raise InputError(f"{where}: missing column _{column}")
        return np.full(len(table), float(default))
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: _{column} has a non-numeric or non-finite value "
                         f"{table[column].iloc[row]!r} in row {row + 1}")
    return values


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


def _optics_groups(optics: pd.DataFrame, where: str) -> dict[int, OpticsGroup]:
    for column in REQUIRED_OPTICS:
        if column not in optics.columns:
            raise InputError(f"{where}: optics table lacks _{column}")
    ids = numeric_column(optics, "rlnOpticsGroup", where).astype(int)
    num = {c: numeric_column(optics, c, where) for c in REQUIRED_OPTICS[1:]}
    tilt_x = numeric_column(optics, "rlnBeamTiltX", where, default=0.0)
    tilt_y = numeric_column(optics, "rlnBeamTiltY", where, default=0.0)
    has_mag = all(c in optics.columns for c in MAG_COLUMNS)
    mags = [numeric_column(optics, c, where) for c in MAG_COLUMNS] if has_mag else None
    groups = {}
    for row, gid in enumerate(ids):
        def vec(column):
            if column not in optics.columns:
                return np.zeros(0)
            return parse_vector(optics[column].iloc[row], f"{where}: _{column} of optics group {gid}")
        name = str(optics["rlnOpticsGroupName"].iloc[row]) if "rlnOpticsGroupName" in optics else f"opticsGroup{gid}"
        mag = np.array([[mags[0][row], mags[1][row]], [mags[2][row], mags[3][row]]]) if has_mag else np.eye(2)
        groups[int(gid)] = OpticsGroup(
            optics_group=int(gid), name=name, voltage_kv=num["rlnVoltage"][row],
            cs_mm=num["rlnSphericalAberration"][row],
            amplitude_contrast=num["rlnAmplitudeContrast"][row],
            pixel_size_A=num["rlnImagePixelSize"][row], box_size=int(num["rlnImageSize"][row]),
            even_zernike=vec("rlnEvenZernike"), odd_zernike=vec("rlnOddZernike"),
            beam_tilt_x_mrad=tilt_x[row], beam_tilt_y_mrad=tilt_y[row], mag_matrix=mag,
            has_beam_tilt="rlnBeamTiltX" in optics.columns or "rlnBeamTiltY" in optics.columns)
    return groups


def _particles(table: pd.DataFrame, groups: dict[int, OpticsGroup], where: str) -> Particles:
    for column in REQUIRED_PARTICLES:
        if column not in table.columns:
            raise InputError(f"{where}: particles table lacks _{column}")
    if "rlnOpticsGroup" in table.columns:
        og = numeric_column(table, "rlnOpticsGroup", where).astype(np.int64)
    elif len(groups) == 1:
        og = np.full(len(table), next(iter(groups)), dtype=np.int64)
    else:
        raise InputError(f"{where}: particles table lacks _rlnOpticsGroup")
    unknown = sorted(set(np.unique(og)) - set(groups))
    if unknown:
        raise InputError(f"{where}: particles refer to optics group {unknown[0]}, "
                         f"which is not in the optics table")
    half = numeric_column(table, "rlnRandomSubset", where).astype(np.int64)
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


def read_particle_star(path) -> ParticleStar:
    """Read and validate a RELION 3.1+ particle STAR file (optics + particles tables)."""
    path = Path(path)
    blocks = read_blocks(path)
    if "optics" not in blocks:
        raise InputError(f"{path}: no data_optics table (RELION 3.1+ particle STAR expected; "
                         f"convert older files with relion_convert_star)")
    if "particles" not in blocks:
        raise InputError(f"{path}: no data_particles table")
    optics, table = blocks["optics"], blocks["particles"]
    if not isinstance(optics, pd.DataFrame) or not isinstance(table, pd.DataFrame) or len(table) == 0:
        raise InputError(f"{path}: the optics and particles tables must be non-empty loops")
    groups = _optics_groups(optics, str(path))
    particles = _particles(table, groups, str(path))
    return ParticleStar(path, blocks, groups, particles, table["rlnImageName"].to_numpy(dtype=str))


def format_float(values) -> np.ndarray:
    """Format numbers as RELION does (fixed, 6 decimals)."""
    return np.array([f"{v:.6f}" for v in np.asarray(values, dtype=np.float64)], dtype=object)


def updated_blocks(star: ParticleStar, cs_mm: dict[int, float], defocus_offset_A: dict[int, float],
                   beam_tilt_mrad: dict[int, tuple[float, float]]) -> dict:
    """Copies of the STAR blocks with refined values written in.

    Only rlnSphericalAberration (and rlnBeamTiltX/Y where present) of refined optics groups and
    rlnDefocusU/V of their particles change; all other text is kept.
    """
    blocks = {name: (block.copy() if isinstance(block, pd.DataFrame) else dict(block))
              for name, block in star.blocks.items()}
    optics, table = blocks["optics"], blocks["particles"]
    ids = numeric_column(optics, "rlnOpticsGroup", str(star.path)).astype(int)
    for row, gid in enumerate(ids):
        if gid not in cs_mm:
            continue
        optics.loc[optics.index[row], "rlnSphericalAberration"] = f"{cs_mm[gid]:.6f}"
        if gid in beam_tilt_mrad:
            for column, value in zip(("rlnBeamTiltX", "rlnBeamTiltY"), beam_tilt_mrad[gid]):
                if column in optics.columns:
                    optics.loc[optics.index[row], column] = f"{value:.6f}"
    og = star.particles.optics_group
    for column, values in (("rlnDefocusU", star.particles.defocus_u_A),
                           ("rlnDefocusV", star.particles.defocus_v_A)):
        new = table[column].to_numpy(dtype=object).copy()
        for gid, offset in defocus_offset_A.items():
            sel = og == gid
            new[sel] = format_float(values[sel] + offset)
        table[column] = new
    return blocks


def write_star_atomic(blocks: dict, path) -> None:
    """Write STAR blocks to ``path`` through a temporary file in the same directory + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        starfile.write(blocks, tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
