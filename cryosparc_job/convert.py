"""The cryoSPARC <-> RELION boundary: particle datasets to csrefine's model and back.

Everything cryoSPARC-specific about particle fields lives here; the core only sees
:class:`csrefine.model.OpticsGroup` / :class:`csrefine.model.Particles` in RELION conventions.

Conventions (see ``cryosparc_job/README_section.md``; how each was checked is noted there):

* ``alignments3D/pose`` is an axis-angle vector (radians). With ``R = Rotation.from_rotvec(pose)``
  (scipy, right-handed Rodrigues), RELION's matrix is ``A = R.as_matrix().T`` and therefore
  ``(rot, tilt, psi) = R.as_euler("ZYZ")`` in degrees (intrinsic ZYZ). This is what pyem
  (``geom.expmap`` builds the transposed Rodrigues matrix, then ``rot2euler``) and cryoDRGN
  (``parse_pose_csparc``: ``expmap(pose).T``; ``R_from_relion`` equals RELION's A) do.
* ``alignments3D/shift`` is ``[x, y]`` in pixels of ``alignments3D/psize_A`` (heterogeneous and
  down-sampled refinements align at another pixel size); ``rlnOriginX/YAngst = shift * psize``,
  no sign change (pyem, cryoDRGN).
* ``ctf/df_angle_rad``, ``ctf/phase_shift_rad``: radians -> degrees.
* ``ctf/exp_group_id`` (0-based) -> ``rlnOpticsGroup = id + 1``; ``alignments3D/split`` 0/1 ->
  ``rlnRandomSubset`` 1/2 (split 0 is predicted from ``map_half_A``).
* ``blob/sign``: images are multiplied by it so that the protein is positive (RELION's
  convention after "invert contrast"); cryoSPARC extractions carry -1 (dark protein).
* Higher-order CTF terms (Global CTF Refinement; k in 1/Å, φ = atan2(ky, kx), λ the electron
  wavelength in Å) become the optics group's rlnOddZernike / rlnEvenZernike (RELION's order and
  un-normalised polynomials, :mod:`csrefine.zernike`) and magnification matrix
  (:func:`cryosparc_aberrations`); zero fields add nothing (no Zernike arrays, identity matrix).
  Magnitudes and polynomial forms follow public sources (pyem, cryoSPARC staff posts,
  teamtomo torch-ctf; see the README's conventions section); signs and directions are
  unverified, so a :class:`Convention` names them, and
  :func:`csrefine.cryosparc.aberration_choice.choose_conventions` lets the particles choose
  (:data:`MOST_LIKELY_CONVENTION` where they cannot tell):

  - ``tilt_A`` (2,) [Å] = Cs·τ (axial coma): odd phase ``s·2πλ²|k|²(t0·kx + t1·ky)``
    (Z3^±1 with the Z1^±1 that cancels their linear part); most likely s = -1, RELION's sign for
    rlnBeamTiltX/Y (the phase does not change with Cs: cryoSPARC stores Cs·τ).
  - ``trefoil_A`` (2,) [Å]: odd phase ``s·(2π/3)λ²|k|³(r0·cos3φ + r1·sin3φ)`` (Z3^3, Z3^-3);
    most likely s = -1 (the sign of the tilt term).
  - ``tetra_A`` (4,) [Å]: even phase added to γ, ``s·[2πλ³|k|⁴(q0·cos2φ + q1·sin2φ) +
    (π/2)λ³|k|⁴(q2·cos4φ + q3·sin4φ)]`` (Z4^±2 with Z2^±2 compensation, Z4^±4); most likely
    s = +1 (the sign of the Cs term).
  - ``shift_A`` (2,) [Å]: odd phase ``s·2π(k·shift)`` (Z1^±1); most likely s = -1 (the tilt's).
  - ``anisomag`` (4,) = M − I row-major: rlnMagMat M = I + A (most likely), (I + A)⁻¹,
    I + Aᵀ or (I + Aᵀ)⁻¹.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from csrefine.ctf import electron_wavelength_A
from csrefine.errors import InputError, shown
from csrefine.geometry import euler_zyz_to_matrix, matrix_to_euler_zyz
from csrefine.model import OpticsGroup, Particles, check_optics_values

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
#: The field of each quantity checked by csrefine.model.check_optics_values.
OPTICS_FIELD_NAMES = {"voltage_kv": "ctf/accel_kv", "cs_mm": "ctf/cs_mm",
                      "amplitude_contrast": "ctf/amp_contrast", "pixel_size_A": "blob/psize_A",
                      "box_size": "blob/shape"}


def check_field_types(dset, what: str) -> None:
    """InputError naming the file, field and dtype if a field csrefine reads holds the wrong
    kind of value (:data:`INTEGER_FIELDS`, :data:`FLOAT_FIELDS`, :data:`STRING_FIELDS`)."""
    for name in dset.fields():
        if name not in _KINDS:
            continue
        kinds, label = _KINDS[name]
        values = np.asarray(dset[name])
        ok = values.dtype.kind in kinds
        if ok and values.dtype.kind == "O":
            ok = all(isinstance(v, (str, bytes)) for v in values[:1000].ravel().tolist())
        if not ok:
            raise InputError(f"{what}: field {name} has dtype {values.dtype} ({_kind_word(values)}); "
                             f"csrefine expects {label} field")


def _kind_word(values: np.ndarray) -> str:
    return {"i": "integers", "u": "integers", "f": "floating-point numbers", "c": "complex numbers",
            "b": "booleans", "U": "strings", "S": "strings", "O": "Python objects"}.get(
        values.dtype.kind, "other values")


# ----------------------------------------------------------------------------- poses
def pose_to_euler_deg(pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cryoSPARC axis-angle poses (n, 3) in radians -> RELION (rot, tilt, psi) in degrees."""
    pose = np.asarray(pose, dtype=np.float64).reshape(-1, 3)
    return matrix_to_euler_zyz(pose_to_relion_matrix(pose))


def pose_to_relion_matrix(pose) -> np.ndarray:
    """RELION matrices A (n, 3, 3) (reference -> observation) of cryoSPARC poses."""
    pose = np.asarray(pose, dtype=np.float64).reshape(-1, 3)
    return np.swapaxes(Rotation.from_rotvec(pose).as_matrix(), -1, -2)


def euler_deg_to_pose(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """RELION ZYZ angles (degrees) -> cryoSPARC axis-angle poses (n, 3) in radians."""
    a = euler_zyz_to_matrix(rot_deg, tilt_deg, psi_deg).reshape(-1, 3, 3)
    return Rotation.from_matrix(np.swapaxes(a, -1, -2)).as_rotvec()


# ----------------------------------------------------------------------------- helpers
def strip_export_marker(path: str) -> str:
    """cryoSPARC exported paths may start with '>' (import-relative marker): drop it."""
    path = str(path)
    return path[1:] if path.startswith(">") else path


def resolve_blob_paths(paths, project_dir, what: str = "particles") -> list[str]:
    """``blob/path`` values are relative to the project directory; absolute ones are kept.

    A relative path that leaves the project directory (``../``) is refused (InputError): cryoSPARC
    writes paths inside the project, or absolute ones for imported stacks, so such a path is a
    damaged or hand-edited dataset reading files it should not.
    """
    out = []
    for p in paths:
        p = strip_export_marker(p.decode() if isinstance(p, bytes) else p)
        if not os.path.isabs(p) and os.path.normpath(p).split(os.sep)[0] == os.pardir:
            raise InputError(f"{what}: blob/path {p!r} leaves the project directory; cryoSPARC's "
                             f"relative paths stay inside it (absolute paths are accepted)")
        if project_dir is not None and not os.path.isabs(p):
            p = str(Path(project_dir) / p)
        out.append(p)
    return out


def _field(dset, name):
    return np.asarray(dset[name])


def _constant_per_group(values, group_ids, field: str, tol: float = 1e-6) -> dict[int, float]:
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


# ----------------------------------------------------------------------------- higher-order CTF terms
#: anisomag directions: rlnMagMat M from A = anisomag.reshape(2, 2) (row-major).
ANISOMAG_DIRECTIONS = ("I+A", "inv(I+A)", "I+A^T", "inv(I+A^T)")


@dataclass(frozen=True)
class Convention:
    """Signs and directions of the higher-order fields (see the module docstring).

    tilt_sign, trefoil_sign, tetra_sign, shift_sign : +1 or -1, the sign s of each phase;
    anisomag : one of :data:`ANISOMAG_DIRECTIONS`.
    """

    tilt_sign: int = -1
    trefoil_sign: int = -1
    tetra_sign: int = 1
    shift_sign: int = -1
    anisomag: str = "I+A"

    def label(self, field: str) -> str:
        """Human-readable convention of ``field`` (a key of :data:`ABERRATION_FIELDS`)."""
        if field == "ctf/anisomag":
            return f"rlnMagMat = {self.anisomag}"
        sign = "-" if getattr(self, FIELD_SETTING[field]) < 0 else "+"
        return {"ctf/tilt_A": f"odd phase {sign}2π λ² |k|² (t·k)",
                "ctf/trefoil_A": f"odd phase {sign}(2π/3) λ² |k|³ (r0 cos3φ + r1 sin3φ)",
                "ctf/tetra_A": f"even phase {sign}λ³|k|⁴ [2π (q0 cos2φ + q1 sin2φ) + "
                               f"(π/2) (q2 cos4φ + q3 sin4φ)]",
                "ctf/shift_A": f"odd phase {sign}2π (k·shift)"}[field]


#: The convention most likely from public sources (used where the data cannot tell).
MOST_LIKELY_CONVENTION = Convention()
#: Which :class:`Convention` attribute each field depends on, and its candidate values (the most
#: likely first).
FIELD_SETTING = {"ctf/tilt_A": "tilt_sign", "ctf/trefoil_A": "trefoil_sign",
                 "ctf/tetra_A": "tetra_sign", "ctf/shift_A": "shift_sign",
                 "ctf/anisomag": "anisomag"}
FIELD_CANDIDATES = {"ctf/tilt_A": (-1, 1), "ctf/trefoil_A": (-1, 1), "ctf/tetra_A": (1, -1),
                    "ctf/shift_A": (-1, 1), "ctf/anisomag": ANISOMAG_DIRECTIONS}


@dataclass(frozen=True)
class GroupAberrations:
    """One exposure group's higher-order fields as stored by cryoSPARC (float64, Å but anisomag).

    tilt_A (2,), trefoil_A (2,), tetra_A (4,), anisomag (4,) (M - I, row-major), shift_A (2,).
    """

    tilt_A: np.ndarray
    trefoil_A: np.ndarray
    tetra_A: np.ndarray
    anisomag: np.ndarray
    shift_A: np.ndarray

    def value(self, field: str) -> np.ndarray:
        return getattr(self, field.split("/")[1])

    def nonzero_fields(self) -> list[str]:
        """The fields (``ctf/...`` names) with any non-zero component, in ABERRATION_FIELDS order."""
        return [f for f in ABERRATION_FIELDS if np.any(self.value(f) != 0)]


@dataclass(frozen=True)
class AberrationTerms:
    """The core's form of one group's fields: even_zernike (9,) or (0,) and odd_zernike (6,) or
    (0,) in radians (RELION order), mag_matrix (2, 2)."""

    even_zernike: np.ndarray
    odd_zernike: np.ndarray
    mag_matrix: np.ndarray


def group_aberrations(dset, exp_ids: np.ndarray) -> dict[int, GroupAberrations]:
    """Each exposure group's higher-order fields (absent fields: zeros).

    exp_ids : (n,) ``ctf/exp_group_id`` per particle. Raises InputError naming the field
    component and group where a value is not constant within a group.
    """
    fields = set(dset.fields())
    n = len(exp_ids)
    per_field = {}
    for name, length in ABERRATION_FIELDS.items():
        values = (_field(dset, name).astype(np.float64).reshape(n, length) if name in fields
                  else np.zeros((n, length)))
        per_field[name] = [_constant_per_group(values[:, i], exp_ids, f"{name}[{i}]")
                           for i in range(length)]
    return {int(eid): GroupAberrations(**{
        name.split("/")[1]: np.array([component[int(eid)] for component in per_field[name]])
        for name in ABERRATION_FIELDS}) for eid in np.unique(exp_ids)}


def odd_zernike_terms(values: GroupAberrations, convention: Convention,
                      wavelength_A: float) -> np.ndarray:
    """rlnOddZernike (6,) radians of tilt, trefoil and shift; (0,) when all are zero.

    Order Z1^-1, Z1^1, Z3^-3, Z3^-1, Z3^1, Z3^3. |k|^3 cosφ = (Z3^1 + 2 Z1^1) / 3.
    """
    if not (np.any(values.tilt_A) or np.any(values.trefoil_A) or np.any(values.shift_A)):
        return np.zeros(0)
    lam2 = wavelength_A**2
    c = np.zeros(6)
    tilt_x, tilt_y = convention.tilt_sign * 2.0 * np.pi * lam2 * values.tilt_A
    c[4] += tilt_x / 3.0
    c[1] += 2.0 * tilt_x / 3.0
    c[3] += tilt_y / 3.0
    c[0] += 2.0 * tilt_y / 3.0
    trefoil = convention.trefoil_sign * (2.0 * np.pi / 3.0) * lam2 * values.trefoil_A
    c[5] += trefoil[0]
    c[2] += trefoil[1]
    shift = convention.shift_sign * 2.0 * np.pi * values.shift_A
    c[1] += shift[0]
    c[0] += shift[1]
    return c


def even_zernike_terms(values: GroupAberrations, convention: Convention,
                       wavelength_A: float) -> np.ndarray:
    """rlnEvenZernike (9,) radians of tetrafoil; (0,) when it is zero.

    Order Z0^0, Z2^-2, Z2^0, Z2^2, Z4^-4, Z4^-2, Z4^0, Z4^2, Z4^4. |k|^4 cos2φ = (Z4^2 + 3 Z2^2) / 4.
    """
    if not np.any(values.tetra_A):
        return np.zeros(0)
    lam3 = wavelength_A**3
    q = convention.tetra_sign * values.tetra_A
    c = np.zeros(9)
    two_fold = 2.0 * np.pi * lam3 * q[:2]
    c[7] += two_fold[0] / 4.0
    c[3] += 3.0 * two_fold[0] / 4.0
    c[5] += two_fold[1] / 4.0
    c[1] += 3.0 * two_fold[1] / 4.0
    c[8] += 0.5 * np.pi * lam3 * q[2]
    c[4] += 0.5 * np.pi * lam3 * q[3]
    return c


def anisomag_matrix(anisomag, direction: str) -> np.ndarray:
    """rlnMagMat (2, 2) of ``anisomag`` = [m00, m01, m10, m11] (M - I) in ``direction``
    (:data:`ANISOMAG_DIRECTIONS`); the identity for zeros."""
    a = np.asarray(anisomag, dtype=np.float64).reshape(2, 2)
    if direction not in ANISOMAG_DIRECTIONS:
        raise ValueError(f"anisomag direction must be one of {ANISOMAG_DIRECTIONS}, got {direction!r}")
    if not np.any(a):
        return np.eye(2)
    if "^T" in direction:
        a = a.T
    m = np.eye(2) + a
    return np.linalg.inv(m) if direction.startswith("inv") else m


def aberration_terms(values: GroupAberrations, convention: Convention,
                     voltage_kv: float) -> AberrationTerms:
    """One group's fields in the core's model under ``convention``."""
    lam = electron_wavelength_A(voltage_kv)
    return AberrationTerms(even_zernike_terms(values, convention, lam),
                           odd_zernike_terms(values, convention, lam),
                           anisomag_matrix(values.anisomag, convention.anisomag))


def cryosparc_aberrations(dset, exp_ids, convention: Convention = MOST_LIKELY_CONVENTION
                          ) -> dict[int, AberrationTerms]:
    """Per exposure group (0-based id), the higher-order fields of ``dset`` as even/odd Zernike
    coefficients and a magnification matrix under ``convention``.

    exp_ids : (n,) exposure group of each particle. The fields and ``ctf/accel_kv`` must be
    constant within each group (InputError naming the field and group otherwise).
    """
    exp_ids = np.asarray(exp_ids, dtype=np.int64)
    voltage = _constant_per_group(_field(dset, "ctf/accel_kv"), exp_ids, "ctf/accel_kv")
    return {eid: aberration_terms(values, convention, voltage[eid])
            for eid, values in group_aberrations(dset, exp_ids).items()}



# ----------------------------------------------------------------------------- cryoSPARC -> RELION
def check_unique_uids(dset, what: str) -> None:
    """InputError naming a uid that two rows share (outputs are matched to inputs by uid)."""
    uid = np.asarray(dset["uid"])
    values, counts = np.unique(uid, return_counts=True)
    if np.any(counts > 1):
        twice = values[counts > 1][0]
        rows = np.flatnonzero(uid == twice)[:2] + 1
        raise InputError(f"{what}: uid {int(twice)} appears twice (rows {rows[0]} and {rows[1]}); "
                         f"each particle needs its own uid")


def relion_params_from_cryosparc(dset, project_dir=None, *, what: str = "particles"):
    """Convert a cryoSPARC particle dataset into csrefine's RELION-convention model.

    Parameters
    ----------
    dset : cryosparc.dataset.Dataset with blob, ctf and alignments3D slots.
    project_dir : the cryoSPARC project directory; relative ``blob/path`` values are resolved
        against it (None: left as they are, minus a leading '>').

    Returns
    -------
    groups : dict optics_group (exp_group_id + 1) -> OpticsGroup, higher-order fields under
        :data:`MOST_LIKELY_CONVENTION` (the loaders then let the particles choose)
    particles : Particles in dataset order
    paths : list of stack paths, one per particle
    indices : int64 array, 0-based image index within each stack (``blob/idx``)
    """
    n = len(dset)
    if n == 0:
        raise InputError(f"{what}: the dataset is empty")
    fields = set(dset.fields())
    if not any(f.startswith("alignments3D/") for f in fields):
        raise InputError(f"{what}: no alignments3D slot; connect particles from a 3D refinement "
                         f"(e.g. Homogeneous or Non-uniform Refinement)")
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise InputError(f"{what}: missing field(s) {', '.join(missing)}")
    check_field_types(dset, what)
    check_unique_uids(dset, what)

    exp = (_field(dset, "ctf/exp_group_id").astype(np.int64) if "ctf/exp_group_id" in fields
           else np.zeros(n, dtype=np.int64))
    shape = _field(dset, "blob/shape").reshape(n, -1)
    if shape.shape[1] != 2 or np.any(shape[:, 0] != shape[:, 1]):
        raise InputError(f"{what}: blob/shape must be square particle images, got {shape[0].tolist()}")
    px = _field(dset, "blob/psize_A").astype(np.float64)
    if np.any(~np.isfinite(px)) or np.any(px <= 0):
        bad = int(np.flatnonzero(~(px > 0))[0])
        raise InputError(f"{what}: blob/psize_A must be positive, got {shown(px[bad])} in row "
                         f"{bad + 1}")

    per = {name: _constant_per_group(_field(dset, name), exp, name)
           for name in ("ctf/cs_mm", "ctf/accel_kv", "ctf/amp_contrast", "blob/psize_A")}
    boxes = _constant_per_group(shape[:, 0], exp, "blob/shape")
    groups = {}
    for eid in sorted(per["ctf/cs_mm"]):
        check_optics_values(what, f"exposure group {eid}", voltage_kv=per["ctf/accel_kv"][eid],
                            cs_mm=per["ctf/cs_mm"][eid],
                            amplitude_contrast=per["ctf/amp_contrast"][eid],
                            pixel_size_A=per["blob/psize_A"][eid], box_size=boxes[eid],
                            names=OPTICS_FIELD_NAMES)
    aberrations = cryosparc_aberrations(dset, exp, MOST_LIKELY_CONVENTION)
    for eid in sorted(per["ctf/cs_mm"]):
        og = eid + 1
        terms = aberrations[eid]
        groups[og] = OpticsGroup(
            optics_group=og, name=f"exposure group {eid}", voltage_kv=per["ctf/accel_kv"][eid],
            cs_mm=per["ctf/cs_mm"][eid], amplitude_contrast=per["ctf/amp_contrast"][eid],
            pixel_size_A=per["blob/psize_A"][eid], box_size=int(boxes[eid]),
            even_zernike=terms.even_zernike, odd_zernike=terms.odd_zernike,
            mag_matrix=terms.mag_matrix)

    if "alignments3D/split" in fields:
        split = _field(dset, "alignments3D/split").astype(np.int64)
        if not np.isin(split, (0, 1)).all():
            bad = int(np.flatnonzero(~np.isin(split, (0, 1)))[0])
            raise InputError(f"{what}: alignments3D/split must be 0 or 1, got {split[bad]} "
                             f"in row {bad + 1}")
    else:
        raise InputError(f"{what}: missing field alignments3D/split (half-set assignment)")

    align_px = (_field(dset, "alignments3D/psize_A").astype(np.float64)
                if "alignments3D/psize_A" in fields else px)
    align_px = np.where(align_px > 0, align_px, px)  # 0 = unset in allocated datasets
    shift = _field(dset, "alignments3D/shift").astype(np.float64).reshape(n, 2)
    rot, tilt, psi = pose_to_euler_deg(_field(dset, "alignments3D/pose"))

    def opt(name, default):
        return (_field(dset, name).astype(np.float64) if name in fields
                else np.full(n, float(default)))

    particles = Particles(
        defocus_u_A=_field(dset, "ctf/df1_A").astype(np.float64),
        defocus_v_A=_field(dset, "ctf/df2_A").astype(np.float64),
        defocus_angle_deg=np.rad2deg(_field(dset, "ctf/df_angle_rad").astype(np.float64)),
        phase_shift_deg=np.rad2deg(opt("ctf/phase_shift_rad", 0.0)),
        bfactor_A2=opt("ctf/bfactor", 0.0), ctf_scale=opt("ctf/scale", 1.0),
        rot_deg=rot, tilt_deg=tilt, psi_deg=psi,
        origin_x_A=shift[:, 0] * align_px, origin_y_A=shift[:, 1] * align_px,
        half_set=split + 1, optics_group=exp + 1)
    try:
        particles.check_finite()
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None
    paths = resolve_blob_paths(_field(dset, "blob/path"), project_dir, what)
    indices = _field(dset, "blob/idx").astype(np.int64)
    return groups, particles, paths, indices


def image_signs(dset) -> np.ndarray:
    """Per-particle factor that makes the protein positive (``blob/sign``; 1 when absent)."""
    if "blob/sign" not in set(dset.fields()):
        return np.ones(len(dset))
    sign = np.asarray(dset["blob/sign"], dtype=np.float64)
    sign = np.where(sign == 0, 1.0, np.sign(sign))  # 0: unset (allocated, not extracted)
    return sign


class SignedImages:
    """Image source applying a per-particle sign to a :class:`csrefine.images.StackReader`."""

    def __init__(self, reader, signs):
        self.reader = reader
        self.signs = np.asarray(signs, dtype=np.float32)

    def __len__(self):
        return len(self.reader)

    @property
    def warnings(self) -> list[str]:
        return self.reader.warnings

    def describe(self, position: int) -> str:
        return self.reader.describe(position)

    def read(self, positions, out=None):
        positions = np.asarray(positions, dtype=np.int64)
        images = self.reader.read(positions, out=out)
        images *= self.signs[positions][:, None, None]
        return images


def open_images(dset, groups, paths, indices, optics_group):
    """Memory-mapped particle images of ``dset`` (signs applied), in dataset order; each
    particle's box and pixel size are those of its group (``optics_group``, per particle)."""
    from csrefine.images import StackReader
    from csrefine.model import per_particle_geometry

    reader = StackReader(paths, indices, *per_particle_geometry(groups, optics_group))
    signs = image_signs(dset)
    return reader if np.all(signs == 1) else SignedImages(reader, signs)


# ----------------------------------------------------------------------------- outputs
def updated_dataset(dset, refinement):
    """Copy of ``dset`` with the refined ``ctf/cs_mm`` (one value per exposure group) and
    ``ctf/df1_A``/``df2_A`` shifted by the group's defocus offset; other fields unchanged.

    Groups that were not refined keep their values.
    """
    out = dset.copy()
    exp = (np.asarray(dset["ctf/exp_group_id"]).astype(np.int64)
           if "ctf/exp_group_id" in set(dset.fields()) else np.zeros(len(dset), dtype=np.int64))
    cs = np.array(out["ctf/cs_mm"])
    df1 = np.array(out["ctf/df1_A"], dtype=np.float64)
    df2 = np.array(out["ctf/df2_A"], dtype=np.float64)
    for g in refinement.groups:
        if not g.refined:
            continue
        sel = exp == g.optics_group - 1
        cs[sel] = g.cs_refined_mm
        df1[sel] += g.defocus_offset_A
        df2[sel] += g.defocus_offset_A
    out["ctf/cs_mm"] = cs
    out["ctf/df1_A"] = df1.astype(out["ctf/df1_A"].dtype)
    out["ctf/df2_A"] = df2.astype(out["ctf/df2_A"].dtype)
    return out


# ----------------------------------------------------------------------------- RELION -> cryoSPARC
PARTICLE_FIELDS_CS = [
    ("blob/path", "O"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
    ("blob/sign", "<f4"), ("blob/import_sig", "<u8"),
    ("ctf/type", "O"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
    ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
    ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"), ("ctf/scale", "<f4"),
    ("ctf/scale_const", "<f4"), ("ctf/shift_A", "<f4", (2,)), ("ctf/tilt_A", "<f4", (2,)),
    ("ctf/trefoil_A", "<f4", (2,)), ("ctf/tetra_A", "<f4", (4,)), ("ctf/anisomag", "<f4", (4,)),
    ("ctf/bfactor", "<f4"),
    ("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)),
    ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4"),
]


def cryosparc_dataset_from_relion(star, project_dir, *, base_dir=".", sign: float = 1.0, uids=None):
    """Build a cryoSPARC particle dataset (blob, ctf, alignments3D) from a parsed RELION STAR.

    star : :class:`csrefine.relion.star_io.ParticleStar`; its ``N@stack`` paths are taken
        relative to ``base_dir`` (the RELION project directory) and written into ``blob/path``
        relative to ``project_dir`` (absolute if the stack is outside it).
    sign : ``blob/sign`` to record (1: the stacks hold RELION-convention, positive-protein images).
    Optics groups with aberrations cryoSPARC fields cannot hold verifiably (Zernike terms, beam
    tilt, magnification) raise InputError.
    """
    from cryosparc.dataset import Dataset

    groups, p = star.groups, star.particles
    for g in groups.values():
        if (np.any(g.even_zernike != 0) or np.any(g.odd_zernike != 0) or g.beam_tilt_x_mrad
                or g.beam_tilt_y_mrad or not np.allclose(g.mag_matrix, np.eye(2))):
            raise InputError(f"optics group {g.optics_group}: aberrations or magnification cannot "
                             f"be converted to cryoSPARC fields")
    n = len(p)
    dset = Dataset.allocate(n, PARTICLE_FIELDS_CS)
    if uids is not None:
        dset["uid"] = np.asarray(uids, dtype=np.uint64)
    project_dir = Path(project_dir).resolve()
    idx = star.image_index
    relative = []
    for stack in star.stack_paths:
        full = (Path(base_dir) / stack).resolve()
        try:
            relative.append(str(full.relative_to(project_dir)))
        except ValueError:
            relative.append(str(full))
    paths = [relative[c] for c in star.stack_code]
    og = p.optics_group
    g_of = [groups[int(o)] for o in og]
    dset["blob/path"] = np.array(paths, dtype=object)
    dset["blob/idx"] = idx
    dset["blob/shape"] = np.array([[g.box_size, g.box_size] for g in g_of])
    px = np.array([g.pixel_size_A for g in g_of])
    dset["blob/psize_A"] = px
    dset["blob/sign"] = np.full(n, float(sign))
    dset["ctf/type"] = np.full(n, "spline", dtype=object)
    dset["ctf/exp_group_id"] = og - 1
    dset["ctf/accel_kv"] = np.array([g.voltage_kv for g in g_of])
    dset["ctf/cs_mm"] = np.array([g.cs_mm for g in g_of])
    dset["ctf/amp_contrast"] = np.array([g.amplitude_contrast for g in g_of])
    dset["ctf/df1_A"] = p.defocus_u_A
    dset["ctf/df2_A"] = p.defocus_v_A
    dset["ctf/df_angle_rad"] = np.deg2rad(p.defocus_angle_deg)
    dset["ctf/phase_shift_rad"] = np.deg2rad(p.phase_shift_deg)
    dset["ctf/scale"] = p.ctf_scale
    dset["ctf/scale_const"] = np.ones(n)
    dset["ctf/bfactor"] = p.bfactor_A2
    dset["alignments3D/split"] = p.half_set - 1
    dset["alignments3D/shift"] = np.stack([p.origin_x_A / px, p.origin_y_A / px], axis=1)
    dset["alignments3D/pose"] = euler_deg_to_pose(p.rot_deg, p.tilt_deg, p.psi_deg)
    dset["alignments3D/psize_A"] = px
    return dset
