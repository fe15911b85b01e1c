"""The cryoSPARC <-> RELION boundary: particle datasets to csrefine's model and back.

Everything cryoSPARC-specific about particle fields lives here; the core only sees
:class:`csrefine.model.OpticsGroup` / :class:`csrefine.model.Particles` in RELION conventions.

Conventions (docs/conventions.md says how each was checked):

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
* Higher-order CTF terms (Global CTF Refinement) become the optics group's rlnOddZernike /
  rlnEvenZernike and rlnMagMat under :data:`.aberrations.MOST_LIKELY_CONVENTION`
  (:mod:`csrefine.cryosparc.aberrations` gives their forms and units); the loaders then let the
  particles choose (:mod:`csrefine.cryosparc.aberration_choice`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from cryosparc.dataset import Dataset
from scipy.spatial.transform import Rotation

from csrefine.errors import InputError, shown
from csrefine.geometry import euler_zyz_to_matrix, matrix_to_euler_zyz
from csrefine.images import StackReader
from csrefine.model import OpticsGroup, Particles, check_optics_values, per_particle_geometry

from .aberrations import MOST_LIKELY_CONVENTION, aberration_terms, group_aberrations
from .fields import (
    OPTICS_FIELD_NAMES,
    REQUIRED_FIELDS,
    check_field_types,
    check_unique_uids,
    constant_per_group,
    exposure_groups,
)


def pose_to_euler_deg(pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cryoSPARC axis-angle poses (n, 3) in radians -> RELION (rot, tilt, psi) in degrees."""
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
def resolve_blob_paths(paths, project_dir, what: str = "particles",
                       field: str = "blob/path") -> list[str]:
    """``blob/path`` values (or another path ``field``, e.g. location/micrograph_path) are
    relative to the project directory; absolute ones are kept. A leading '>' (the
    import-relative marker of exported paths) is dropped.

    A relative path that leaves the project directory (``../``) is refused (InputError): cryoSPARC
    writes paths inside the project, or absolute ones for imported stacks, so such a path is a
    damaged or hand-edited dataset reading files it should not.
    """
    out = []
    for p in paths:
        p = str(p.decode() if isinstance(p, bytes) else p)
        p = p[1:] if p.startswith(">") else p
        if not os.path.isabs(p) and os.path.normpath(p).split(os.sep)[0] == os.pardir:
            raise InputError(f"{what}: {field} {p!r} leaves the project directory; cryoSPARC's "
                             f"relative paths stay inside it (absolute paths are accepted)")
        if project_dir is not None and not os.path.isabs(p):
            p = str(Path(project_dir) / p)
        out.append(p)
    return out


def relion_params_from_cryosparc(dset, project_dir=None, *, what: str = "particles"):
    """Convert a cryoSPARC particle dataset into csrefine's RELION-convention model: THE
    boundary conversion of the cryoSPARC adapter (the conventions are the module docstring's).

    Parameters
    ----------
    dset : cryosparc.dataset.Dataset with blob, ctf and alignments3D slots.
    project_dir : the cryoSPARC project directory; relative ``blob/path`` values are resolved
        against it (None: left as they are, minus a leading '>').
    what : how messages name the dataset.

    Returns
    -------
    groups : dict optics_group (exp_group_id + 1) -> OpticsGroup, higher-order fields under
        :data:`MOST_LIKELY_CONVENTION` (the loaders then let the particles choose)
    particles : Particles in dataset order
    paths : list of stack paths, one per particle
    indices : int64 array, 0-based image index within each stack (``blob/idx``)
    """
    check_dataset(dset, what)
    exp = exposure_groups(dset)
    groups = optics_groups(dset, exp, what)
    particles = particle_parameters(dset, exp, what)
    paths = resolve_blob_paths(dset["blob/path"], project_dir, what)
    return groups, particles, paths, np.array(dset["blob/idx"], dtype=np.int64)


def check_dataset(dset, what: str) -> None:
    """InputError naming the dataset and field if it cannot be converted: empty, no 3D
    alignments, a required field missing or of the wrong kind, a uid twice, images that are not
    square, pixel sizes that are not positive, a split other than 0/1."""
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
    if "alignments3D/split" not in fields:
        raise InputError(f"{what}: missing field alignments3D/split (half-set assignment)")
    check_field_types(dset, what)
    check_unique_uids(dset, what)
    shape = np.asarray(dset["blob/shape"]).reshape(n, -1)
    if shape.shape[1] != 2 or np.any(shape[:, 0] != shape[:, 1]):
        raise InputError(f"{what}: blob/shape must be square particle images, got {shape[0].tolist()}")
    px = np.array(dset["blob/psize_A"], dtype=np.float64)
    if np.any(~np.isfinite(px)) or np.any(px <= 0):
        bad = int(np.flatnonzero(~(px > 0))[0])
        raise InputError(f"{what}: blob/psize_A must be positive, got {shown(px[bad])} in row "
                         f"{bad + 1}")
    split = np.array(dset["alignments3D/split"], dtype=np.int64)
    if not np.isin(split, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(split, (0, 1)))[0])
        raise InputError(f"{what}: alignments3D/split must be 0 or 1, got {split[bad]} "
                         f"in row {bad + 1}")


def optics_groups(dset, exp: np.ndarray, what: str) -> dict[int, OpticsGroup]:
    """One optics group per exposure group (number exp_group_id + 1, named as cryoSPARC names
    it); Cs, voltage, amplitude contrast, pixel and box size must be constant within each."""
    per = {q: constant_per_group(np.asarray(dset[OPTICS_FIELD_NAMES[q]]), exp, OPTICS_FIELD_NAMES[q])
           for q in ("cs_mm", "voltage_kv", "amplitude_contrast", "pixel_size_A")}
    per["box_size"] = constant_per_group(np.asarray(dset["blob/shape"]).reshape(len(dset), -1)[:, 0],
                                         exp, "blob/shape")
    values = {eid: {q: per[q][eid] for q in per} for eid in sorted(per["cs_mm"])}
    for eid, v in values.items():
        check_optics_values(what, f"exposure group {eid}", **v, names=OPTICS_FIELD_NAMES)
    aberrations = group_aberrations(dset, exp)
    return {eid + 1: OpticsGroup(
        optics_group=eid + 1, name=f"exposure group {eid}", **dict(v, box_size=int(v["box_size"])),
        **aberration_terms(aberrations[eid], MOST_LIKELY_CONVENTION, v["voltage_kv"]))
        for eid, v in values.items()}


def particle_parameters(dset, exp: np.ndarray, what: str) -> Particles:
    """The particles' CTF, pose and origin in RELION's conventions (module docstring)."""
    n, fields = len(dset), set(dset.fields())
    px = np.array(dset["blob/psize_A"], dtype=np.float64)
    align_px = (np.array(dset["alignments3D/psize_A"], dtype=np.float64)
                if "alignments3D/psize_A" in fields else px)
    align_px = np.where(align_px > 0, align_px, px)  # 0 = unset in allocated datasets
    shift = np.array(dset["alignments3D/shift"], dtype=np.float64).reshape(n, 2)
    rot, tilt, psi = pose_to_euler_deg(dset["alignments3D/pose"])

    def optional(name, default):
        return (np.array(dset[name], dtype=np.float64) if name in fields
                else np.full(n, float(default)))

    particles = Particles(
        defocus_u_A=np.array(dset["ctf/df1_A"], dtype=np.float64),
        defocus_v_A=np.array(dset["ctf/df2_A"], dtype=np.float64),
        defocus_angle_deg=np.rad2deg(np.array(dset["ctf/df_angle_rad"], dtype=np.float64)),
        phase_shift_deg=np.rad2deg(optional("ctf/phase_shift_rad", 0.0)),
        bfactor_A2=optional("ctf/bfactor", 0.0), ctf_scale=optional("ctf/scale", 1.0),
        rot_deg=rot, tilt_deg=tilt, psi_deg=psi,
        origin_x_A=shift[:, 0] * align_px, origin_y_A=shift[:, 1] * align_px,
        half_set=np.array(dset["alignments3D/split"], dtype=np.int64) + 1, optics_group=exp + 1)
    try:
        particles.check_finite()
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None
    return particles


def image_signs(dset) -> np.ndarray:
    """Per-particle factor that makes the protein positive (``blob/sign``; 1 when absent)."""
    if "blob/sign" not in set(dset.fields()):
        return np.ones(len(dset))
    sign = np.asarray(dset["blob/sign"], dtype=np.float64)
    return np.where(sign == 0, 1.0, np.sign(sign))  # 0: unset (allocated, not extracted)


class SignedStackReader(StackReader):
    """A :class:`csrefine.images.StackReader` multiplying each image by its particle's sign."""

    def __init__(self, paths, indices, box, pixel_size_A, signs):
        super().__init__(paths, indices, box, pixel_size_A)
        self.signs = np.asarray(signs, dtype=np.float32)

    def read(self, positions, out=None):
        positions = np.asarray(positions, dtype=np.int64)
        images = super().read(positions, out=out)
        images *= self.signs[positions][:, None, None]
        return images


def open_images(dset, groups, paths, indices, optics_group):
    """Memory-mapped particle images of ``dset`` (signs applied), in dataset order; each
    particle's box and pixel size are those of its group (``optics_group``, per particle)."""
    geometry = per_particle_geometry(groups, optics_group)
    signs = image_signs(dset)
    if np.all(signs == 1):
        return StackReader(paths, indices, *geometry)
    return SignedStackReader(paths, indices, *geometry, signs)


# ----------------------------------------------------------------------------- outputs
def updated_dataset(dset, refinement):
    """Copy of ``dset`` with the refined ``ctf/cs_mm`` (one value per exposure group) and
    ``ctf/df1_A``/``df2_A`` shifted by the group's defocus offset; other fields unchanged.

    Groups that were not refined keep their values.
    """
    out = dset.copy()
    exp = exposure_groups(dset)
    for g in (g for g in refinement.groups if g.refined):
        sel = exp == g.optics_group - 1
        out["ctf/cs_mm"][sel] = g.cs_refined_mm
        for name in ("ctf/df1_A", "ctf/df2_A"):  # the sum in float64, stored in the field's dtype
            out[name][sel] = np.asarray(out[name][sel], dtype=np.float64) + g.defocus_offset_A
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


def cryosparc_dataset_from_relion(star, project_dir, *, base_dir=".", sign: float = 1.0, uids=None,
                                  micrographs=None):
    """Build a cryoSPARC particle dataset (blob, ctf, alignments3D) from a parsed RELION STAR.

    star : :class:`csrefine.relion.star_io.ParticleStar`; its ``N@stack`` paths are taken
        relative to ``base_dir`` (the RELION project directory) and written into ``blob/path``
        relative to ``project_dir`` (absolute if the stack is outside it).
    sign : ``blob/sign`` to record (1: the stacks hold RELION-convention, positive-protein images).
    micrographs : each particle's rlnMicrographName, or None; written into
        ``location/micrograph_path`` like the stacks (relative to ``project_dir``).
    Optics groups with aberrations cryoSPARC fields cannot hold verifiably (Zernike terms, beam
    tilt, magnification) raise InputError.
    """

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
    relative = _project_paths(star.stack_paths, base_dir, project_dir)
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
    if micrographs is not None:
        names, codes = np.unique(np.asarray(micrographs, dtype=str), return_inverse=True)
        dset.add_fields(["location/micrograph_path"], ["O"])
        dset["location/micrograph_path"] = np.array(
            _project_paths(names, base_dir, project_dir), dtype=object)[codes]
    return dset


def _project_paths(paths, base_dir, project_dir: Path) -> list[str]:
    """RELION paths (relative to ``base_dir``) relative to the cryoSPARC ``project_dir``, or
    absolute where outside it."""
    out = []
    for path in paths:
        full = (Path(base_dir) / path).resolve()
        try:
            out.append(str(full.relative_to(project_dir)))
        except ValueError:
            out.append(str(full))
    return out
