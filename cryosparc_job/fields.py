"""The cryoSPARC particle fields csrefine reads: which, of what kind, and the checks on them."""

from __future__ import annotations

import numpy as np

from csrefine.errors import InputError

REQUIRED_FIELDS = (
    "blob/path", "blob/idx", "blob/shape", "blob/psize_A",
    "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A", "ctf/df2_A",
    "ctf/df_angle_rad",
    "alignments3D/pose", "alignments3D/shift",
)
#: Global CTF Refinement's higher-order fields and their lengths.
ABERRATION_FIELDS = {"ctf/tilt_A": 2, "ctf/trefoil_A": 2, "ctf/tetra_A": 4, "ctf/anisomag": 4,
                     "ctf/shift_A": 2}
#: The kind of value each field read here must hold (numpy dtype kinds): a float ``blob/idx``
#: would be truncated, integer poses are not cryoSPARC's, a string number is no number.
INTEGER_FIELDS = ("blob/idx", "blob/shape", "ctf/exp_group_id", "alignments3D/split")
STRING_FIELDS = ("blob/path",)
FLOAT_FIELDS = ("blob/psize_A", "blob/sign", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast",
                "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/phase_shift_rad", "ctf/scale",
                "ctf/bfactor", "alignments3D/pose", "alignments3D/shift",
                "alignments3D/psize_A", *ABERRATION_FIELDS)
_KINDS = {**{f: ("iu", "an integer") for f in INTEGER_FIELDS},
          **{f: ("f", "a floating-point") for f in FLOAT_FIELDS},
          **{f: ("OUS", "a string") for f in STRING_FIELDS}}
_KIND_WORDS = {"i": "integers", "u": "integers", "f": "floating-point numbers", "c": "complex numbers",
               "b": "booleans", "U": "strings", "S": "strings", "O": "Python objects"}
#: The field of each quantity checked by csrefine.model.check_optics_values.
OPTICS_FIELD_NAMES = {"voltage_kv": "ctf/accel_kv", "cs_mm": "ctf/cs_mm",
                      "amplitude_contrast": "ctf/amp_contrast", "pixel_size_A": "blob/psize_A",
                      "box_size": "blob/shape"}


def check_field_types(dset, what: str) -> None:
    """InputError naming the file, field and dtype if a field csrefine reads holds the wrong
    kind of value (:data:`INTEGER_FIELDS`, :data:`FLOAT_FIELDS`, :data:`STRING_FIELDS`)."""
    for name in [f for f in dset.fields() if f in _KINDS]:
        kinds, label = _KINDS[name]
        values = np.asarray(dset[name])
        ok = values.dtype.kind in kinds
        if ok and values.dtype.kind == "O":
            ok = all(isinstance(v, (str, bytes)) for v in values[:1000].ravel().tolist())
        if not ok:
            held = _KIND_WORDS.get(values.dtype.kind, "other values")
            raise InputError(f"{what}: field {name} has dtype {values.dtype} ({held}); "
                             f"csrefine expects {label} field")


def exposure_groups(dset) -> np.ndarray:
    """Each particle's exposure group (``ctf/exp_group_id``, 0 when absent), int64."""
    if "ctf/exp_group_id" in set(dset.fields()):
        return np.array(dset["ctf/exp_group_id"], dtype=np.int64)
    return np.zeros(len(dset), dtype=np.int64)


def constant_per_group(values, group_ids, field: str, tol: float = 1e-6) -> dict[int, float]:
    """One value per exposure group; InputError naming the field and group if it varies."""
    out = {}
    for gid in np.unique(group_ids):
        v = np.asarray(values[group_ids == gid], dtype=np.float64)
        lo, hi = float(v.min()), float(v.max())
        if hi - lo > tol * max(1.0, abs(hi)):
            raise InputError(f"{field} is not constant within exposure group {int(gid)} "
                             f"(values from {lo:g} to {hi:g}); csrefine refines one Cs per exposure "
                             f"group and needs one {field.split('/')[-1]} per group (split the "
                             f"exposure groups, e.g. with Exposure Group Utilities)")
        out[int(gid)] = float(v[0])
    return out


def check_unique_uids(dset, what: str) -> None:
    """InputError naming a uid that two rows share (outputs are matched to inputs by uid)."""
    uid = np.asarray(dset["uid"])
    values, counts = np.unique(uid, return_counts=True)
    if np.any(counts > 1):
        twice = values[counts > 1][0]
        rows = np.flatnonzero(uid == twice)[:2] + 1
        raise InputError(f"{what}: uid {int(twice)} appears twice (rows {rows[0]} and {rows[1]}); "
                         f"each particle needs its own uid")
