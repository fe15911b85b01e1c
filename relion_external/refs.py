"""Find the half maps (and mask) from what a RELION user gives the External job."""

from __future__ import annotations

import re

from csrefine.errors import InputError
from csrefine.paths import check_input_file

from .star_tables import key_values


def half_maps_beside(map_path: str) -> tuple[str, str]:
    """Refine3D's run_class001.mrc -> run_half1_class001_unfil.mrc, run_half2_class001_unfil.mrc
    in the same directory (also run_it025_class001.mrc -> run_it025_half1_class001_unfil.mrc)."""
    path = check_input_file(map_path, "3D reference")
    m = re.match(r"(.*)_(class\d+)\.mrc$", path.name)
    if not m:
        raise InputError(f"{map_path}: not a Refine3D map name (…_classNNN.mrc); give half1/half2 "
                         f"or a postprocess STAR")
    halves = tuple(str(path.with_name(f"{m.group(1)}_half{h}_{m.group(2)}_unfil.mrc")) for h in (1, 2))
    for h in halves:
        check_input_file(h, f"half map (expected beside {map_path})")
    return halves


def from_postprocess(star_path: str) -> tuple[str, str, str | None]:
    """Half maps and mask named in a PostProcess STAR's data_general block."""
    general = key_values(check_input_file(star_path, "PostProcess STAR"), "general", star_path)
    if general is None:
        raise InputError(f"{star_path}: no data_general block (not a PostProcess STAR)")
    h1, h2 = general.get("rlnUnfilteredMapHalf1"), general.get("rlnUnfilteredMapHalf2")
    if not h1 or not h2:
        raise InputError(f"{star_path}: data_general lacks _rlnUnfilteredMapHalf1/2")
    return h1, h2, general.get("rlnMaskName") or None


def resolve_half_maps(in_3dref, half1=None, half2=None, postprocess=None, in_mask=None):
    """(half1, half2, mask) from explicit half maps, a PostProcess STAR, or a Refine3D map."""
    mask = in_mask or None
    if half1 or half2:
        if not (half1 and half2):
            raise InputError("give both half1 and half2")
        return str(check_input_file(half1, "half map 1")), str(check_input_file(half2, "half map 2")), mask
    if postprocess or (in_3dref and str(in_3dref).endswith(".star")):
        h1, h2, pp_mask = from_postprocess(postprocess or in_3dref)
        return h1, h2, mask or pp_mask
    if in_3dref:
        h1, h2 = half_maps_beside(in_3dref)
        return h1, h2, mask
    raise InputError("no reference: give --in_3dref (Refine3D map or PostProcess STAR), "
                     "a postprocess parameter, or half1 and half2")
