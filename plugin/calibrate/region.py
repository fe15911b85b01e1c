"""Where the calibration looks: the docked model's atoms, the mask around them, and the crop plan.

The match uses only the masked density and the frequencies of the band, so the calibration works
on (:class:`CropPlan`) the smallest FFT-friendly cube holding the mask's support and the atoms
plus a margin (translation search + the scan's excursion + :data:`CROP_MARGIN_A`), Fourier
cropped to the band's highest shell plus :data:`BAND_MARGIN_SHELLS` (frequency index j keeps its
frequency j / (cube * p)). A box-400 map of a 100 A particle at 3.5 A is thus matched on a grid
of ~64^3 instead of 400^3.

Docking convention: maps are indexed [z, y, x]; a model coordinate ``x`` (Angstrom, x/y/z
order) was docked at the *nominal* pixel size, i.e. it sits at voxel ``(x - origin_A) / p_nom``
(``origin_A`` is the MRC header origin, zero for RELION maps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..atomic_map import atom_positions_A
from ..errors import InputError
from ..fourier import even_fast

#: Margin (Å) kept around the mask's and the model's extent when the maps are cropped in real
#: space, beyond the translation search and the scale scan's excursion: the model map's tails.
CROP_MARGIN_A = 6.0
#: Fourier shells kept beyond the band's highest shell (rounding of shells, the whitening's
#: neighbourhood); the Nyquist shell of the cropped grid is never in the band.
BAND_MARGIN_SHELLS = 3
#: Atoms outside the box beyond this fraction: the model is not docked in this map.
MAX_OUTSIDE_FRACTION = 0.01


def docked_voxels(structure, box: int, pixel_size_A: float, origin_A) -> np.ndarray:
    """The atoms' positions in map voxels (n, 3), x/y/z order, at the nominal pixel size.

    Raises InputError when more than :data:`MAX_OUTSIDE_FRACTION` of them lie outside the box.
    """
    pos = (atom_positions_A(structure) - np.asarray(origin_A, float)) / pixel_size_A
    outside = ((pos < 0) | (pos > box - 1)).any(axis=1)
    if outside.mean() > MAX_OUTSIDE_FRACTION:
        raise InputError(f"the atomic model is not docked in this map: {100 * outside.mean():.0f}% "
                         f"of its atoms lie outside the {box}^3 box at {pixel_size_A:.4f} Å/pixel")
    return pos


def model_mask(structure, box: int, pixel_size_A: float, *, origin_A=(0.0, 0.0, 0.0),
               dilate_A: float = 4.0, edge_A: float = 6.0) -> np.ndarray:
    """Soft mask around the docked model.

    Parameters
    ----------
    structure : gemmi.Structure
        The model, docked at ``pixel_size_A`` (Angstrom coordinates).
    box : int
        Side of the map, voxels.
    pixel_size_A, origin_A : float, (3,) floats
        The map's nominal pixel size and header origin (x, y, z), Angstrom.
    dilate_A, edge_A : float
        Voxels within ``dilate_A`` of an atom are 1, with a raised-cosine edge of ``edge_A``.

    Returns
    -------
    numpy.ndarray
        float32, (box, box, box), [z, y, x], values in [0, 1]. The distance transform runs only
        over the atoms' bounding box plus the mask's reach, so its cost and memory follow the
        model, not the box (the rest of the box is 0).
    """
    pos = (atom_positions_A(structure) - np.asarray(origin_A, float)) / pixel_size_A
    idx = np.rint(pos[:, ::-1]).astype(np.int64)
    keep = ((idx >= 0) & (idx < box)).all(axis=1)
    idx = idx[keep]
    out = np.zeros((box,) * 3, dtype=np.float32)
    if idx.size == 0:
        return out
    reach = int(np.ceil((dilate_A + edge_A) / pixel_size_A)) + 1
    lo = np.maximum(idx.min(axis=0) - reach, 0)
    hi = np.minimum(idx.max(axis=0) + reach + 1, box)
    occ = np.ones(tuple(hi - lo), dtype=bool)
    occ[tuple((idx - lo).T)] = False
    dist = ndimage.distance_transform_edt(occ) * pixel_size_A
    x = np.clip((dist - dilate_A) / edge_A, 0.0, 1.0)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 0.5 + 0.5 * np.cos(np.pi * x)
    return out


@dataclass(frozen=True)
class CropPlan:
    """Where the calibration looks: a real-space cube around the mask, and its Fourier crop.

    start_zyx : first voxel (z, y, x) of the cube in the map; cube_box : its side (voxels at the
    nominal pixel size); fourier_box : side of the Fourier-cropped grid (frequency index j holds
    j / (cube_box * pixel) per Angstrom on both); coarse_voxel : cube_box / fourier_box, the
    cropped grid's voxel in map voxels.
    """

    start_zyx: tuple
    cube_box: int
    fourier_box: int

    @property
    def coarse_voxel(self) -> float:
        return self.cube_box / self.fourier_box


def region_cube(mask: np.ndarray, atoms_xyz_vox: np.ndarray, pixel_size_A: float,
                max_shift_A: float, scan_range: float, crop: bool) -> tuple:
    """(start_zyx, side) of the cube the calibration works on (the whole box if not ``crop``).

    The smallest FFT-friendly cube (even side) inside the box holding the mask's support and the
    atoms (atoms_xyz_vox : (n, 3) map voxels) with a margin: the translation search, the scan's
    largest excursion of the model's radius and :data:`CROP_MARGIN_A`, Angstrom. The masked map
    is zero beyond the mask, so the transform on the cube is the map's, and the model map,
    shifted within the search, does not wrap onto the map.
    """
    box = mask.shape[0]
    if not crop:
        return (0, 0, 0), box
    centred = atoms_xyz_vox - atoms_xyz_vox.mean(axis=0)
    radius_A = float(np.sqrt((centred ** 2).sum(axis=1)).max()) * pixel_size_A
    margin_vox = (max_shift_A + scan_range * radius_A + CROP_MARGIN_A) / pixel_size_A
    atoms_zyx = atoms_xyz_vox[:, ::-1]
    support = [np.flatnonzero(np.any(mask > 0, axis=tuple(a for a in range(3) if a != ax)))
               for ax in range(3)]
    lo = np.array([s[0] if s.size else box // 2 for s in support], float)
    hi = np.array([s[-1] if s.size else box // 2 for s in support], float)
    lo = np.minimum(lo, atoms_zyx.min(axis=0) - margin_vox)
    hi = np.maximum(hi, atoms_zyx.max(axis=0) + margin_vox)
    side = even_fast(float((hi - lo).max()) + 1, box)
    start = np.clip(np.floor((lo + hi) / 2 - side // 2), 0, box - side).astype(int)
    return tuple(int(v) for v in start), int(side)
