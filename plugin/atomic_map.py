"""Atomic models: reading them (gemmi), docking them in a box, and their electron-scattering
density maps on an exact box and pixel size."""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np

from .errors import InputError
from .paths import check_input_file

#: PDB entry 1BD2 (public-domain PDB data), shipped with the package for the example.
PACKAGED_MODEL = Path(__file__).resolve().parent / "data" / "1BD2.cif.gz"


def atom_positions_A(structure) -> np.ndarray:
    """Non-hydrogen atom positions of the first model, shape (n, 3), x/y/z order, Angstrom."""
    pos = [[a.pos.x, a.pos.y, a.pos.z] for ch in structure[0] for res in ch for a in res
           if not a.is_hydrogen()]
    if not pos:
        raise InputError("the atomic model has no (non-hydrogen) atoms")
    return np.asarray(pos, dtype=np.float64)


def centroid_A(structure) -> np.ndarray:
    """Mean non-hydrogen atom position (x, y, z), Å: the centre :func:`docked_structure` puts at
    the box centre by default."""
    return atom_positions_A(structure).mean(axis=0)


def docked_structure(structure, box: int, pixel_size_A: float, centre_A=None):
    """A copy of ``structure`` translated so that ``centre_A`` (default: :func:`centroid_A`)
    sits at voxel box//2 of a map whose voxel 0 is at 0 A: the model docked in that map."""
    st = structure.clone()
    st.setup_entities()
    st.remove_hydrogens()
    centre = centroid_A(st) if centre_A is None else np.asarray(centre_A, float)
    shift = (box // 2) * pixel_size_A - centre
    for model in st:
        model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*shift)))
    return st


def density_map(structure, box: int, pixel_size_A: float, *, b_factor_A2: float = 20.0,
                centre_A=None, blur_A2: float = 0.0) -> np.ndarray:
    """Electron-scattering map of a gemmi Structure, shape (box, box, box) indexed [z, y, x].

    The structure point ``centre_A`` (default: its mean non-hydrogen atom position) lands on voxel box//2 in
    each axis (see :func:`docked_structure`). Every atom gets the uniform ``b_factor_A2``. The
    model is not modified.
    """
    st = docked_structure(structure, box, pixel_size_A, centre_A)
    for cra in st[0].all():  # the model whose density is computed
        cra.atom.b_iso = b_factor_A2
    length = box * pixel_size_A
    st.cell = gemmi.UnitCell(length, length, length, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    calc = gemmi.DensityCalculatorE()
    calc.d_min = 2.0 * pixel_size_A
    calc.blur = blur_A2
    calc.grid.unit_cell = st.cell
    calc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calc.grid.set_size(box, box, box)
    calc.grid.fill(0.0)
    calc.add_model_density_to_grid(st[0])
    calc.grid.symmetrize_sum()
    # gemmi's grid is indexed [x, y, z]; RELION/MRC volumes are [z, y, x].
    return np.ascontiguousarray(np.array(calc.grid, copy=True).transpose(2, 1, 0), dtype=np.float32)


def read_model(path):
    """Read an atomic model (mmCIF or PDB, optionally gzipped) with gemmi; InputError if unusable."""
    path = check_input_file(path, "atomic model")
    try:
        structure = gemmi.read_structure(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a readable mmCIF/PDB model ({exc})") from exc
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise InputError(f"{path}: the model has no atoms")
    return structure
