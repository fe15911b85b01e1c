"""Particle tables without an optics table (RELION 3.0's layout, e.g. ``relion_preprocess`` and
``relion_refine`` of that version): each particle states its optics.

The optics groups are the distinct combinations of rlnVoltage, rlnSphericalAberration,
rlnAmplitudeContrast, pixel size and rlnBeamTiltX/Y, numbered in order of first appearance
(RELION 3.1 forms and numbers them so when it converts such a file). The pixel size is
rlnDetectorPixelSize (µm) * 1e4 / rlnMagnification where both are given (RELION 3.1 converts
only such files), else rlnImagePixelSize or rlnPixelSize; origins are rlnOriginX/Y in pixels
(rlnOriginXAngst/YAngst are taken where present); the box size comes from the stack header.
The writer puts a refined Cs into every particle's rlnSphericalAberration.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from csrefine.errors import InputError
from csrefine.model import OpticsGroup, check_optics_values

from .star_tables import Table, numeric_column

OPTICS_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
PIXEL_COLUMNS = ("rlnDetectorPixelSize", "rlnMagnification", "rlnImagePixelSize", "rlnPixelSize")
TILT_COLUMNS = ("rlnBeamTiltX", "rlnBeamTiltY")
#: The per-particle columns of this layout that the reader keeps.
COLUMNS = OPTICS_COLUMNS + PIXEL_COLUMNS + TILT_COLUMNS + ("rlnOriginX", "rlnOriginY")


def pixel_sizes_A(table: Table, where: str) -> tuple[np.ndarray, str]:
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


def origins_A(table: Table, where: str, pixel_size_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origins in Å: rlnOriginXAngst/YAngst, or rlnOriginX/Y (pixels) times the pixel size."""
    if "rlnOriginXAngst" in table or "rlnOriginX" not in table:
        return (numeric_column(table, "rlnOriginXAngst", where),
                numeric_column(table, "rlnOriginYAngst", where))
    return (numeric_column(table, "rlnOriginX", where) * pixel_size_A,
            numeric_column(table, "rlnOriginY", where) * pixel_size_A)


def optics_groups(table: Table, where: str, box_of_row: Callable[[int], int]):
    """(optics groups by number, each particle's group number, each particle's pixel size in
    Å) of a table that states the optics per particle; ``box_of_row(row)`` is the box size of
    that particle's stack."""
    for column in OPTICS_COLUMNS:
        if column not in table:
            raise InputError(f"{where}: no data_optics table, and data_{table.block} does not "
                             f"state the optics per particle (no _{column})")
    voltage, cs, q0 = (numeric_column(table, c, where) for c in OPTICS_COLUMNS)
    pixel, pixel_names = pixel_sizes_A(table, where)
    tilt_x, tilt_y = (numeric_column(table, c, where, default=0.0) for c in TILT_COLUMNS)
    keys = np.stack([voltage, cs, q0, pixel, tilt_x, tilt_y], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # the groups in order of first appearance
    number = np.empty(len(order), dtype=np.int64)
    number[order] = np.arange(1, len(order) + 1)
    names = {"voltage_kv": "_rlnVoltage", "cs_mm": "_rlnSphericalAberration",
             "amplitude_contrast": "_rlnAmplitudeContrast", "pixel_size_A": pixel_names,
             "box_size": "the stack's box size"}
    groups = {}
    for gid, row in enumerate(first[order].tolist(), start=1):
        box = box_of_row(row)
        check_optics_values(where, f"row {row + 1} (optics group {gid})", voltage_kv=voltage[row],
                            cs_mm=cs[row], amplitude_contrast=q0[row], pixel_size_A=pixel[row],
                            box_size=box, names=names)
        groups[gid] = OpticsGroup(
            gid, f"opticsGroup{gid}", float(voltage[row]), float(cs[row]), float(q0[row]),
            float(pixel[row]), int(box), beam_tilt_x_mrad=float(tilt_x[row]),
            beam_tilt_y_mrad=float(tilt_y[row]),
            has_beam_tilt=any(c in table for c in TILT_COLUMNS))
    return groups, number[np.ravel(inverse)], pixel
