"""The cryoSPARC boundary: poses, shifts, units, ids, real T20S rows, and cross-path agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryosparc.dataset import Dataset
from scipy.spatial.transform import Rotation

from csrefine.atomic_map import PACKAGED_MODEL
from csrefine.cryosparc.convert import (
    PARTICLE_FIELDS_CS,
    cryosparc_dataset_from_relion,
    euler_deg_to_pose,
    pose_to_euler_deg,
    pose_to_relion_matrix,
    relion_params_from_cryosparc,
    updated_dataset,
)
from csrefine.errors import InputError
from csrefine.forward import band_to_images, pixel_terms, predict_band, shifted_projections
from csrefine.fourier import make_band
from csrefine.geometry import euler_zyz_to_matrix
from csrefine.model import OpticsGroup
from csrefine.projection import make_padded_reference

DATA = Path(__file__).parent / "data"
T20S_JSON = DATA / "cryosparc_t20s_particles.json"


def t20s_dataset() -> Dataset:
    """The 10 real T20S particle rows of cryosparc-tools' test suite (blob + ctf slots)."""
    doc = json.loads(T20S_JSON.read_text())
    dtype = [tuple(d[:2]) + ((tuple(d[2]),) if len(d) == 3 else ()) for d in doc["dtype"]]
    rows = [tuple(tuple(v) if isinstance(v, list) else v for v in r) for r in doc["rows"]]
    return Dataset(np.rec.array(rows, dtype=dtype))


def with_alignments(dset: Dataset, rng, split=None, psize=None) -> Dataset:
    n = len(dset)
    dset = dset.copy().add_fields([("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)),
                                   ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4")])
    dset["alignments3D/split"] = np.arange(n) % 2 if split is None else split
    dset["alignments3D/shift"] = rng.uniform(-3, 3, (n, 2))
    dset["alignments3D/pose"] = Rotation.random(n, random_state=1).as_rotvec()
    dset["alignments3D/psize_A"] = dset["blob/psize_A"] if psize is None else psize
    return dset


# ----------------------------------------------------------------------------- poses
def rodrigues(v):
    """Right-handed axis-angle rotation matrix, written out (no scipy)."""
    theta = np.linalg.norm(v)
    if theta == 0:
        return np.eye(3)
    w = v / theta
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def pyem_expmap(e):
    """pyem.geom.expmap as written in pyem (its skew matrix is the transpose of the usual one)."""
    theta = np.linalg.norm(e)
    w = e / theta
    k = np.array([[0, w[2], -w[1]], [-w[2], 0, w[0]], [w[1], -w[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def test_pose_round_trip_relion_euler():
    rng = np.random.default_rng(0)
    rot, psi = rng.uniform(-180, 180, (2, 200))
    tilt = rng.uniform(1, 179, 200)
    pose = euler_deg_to_pose(rot, tilt, psi)
    back = pose_to_euler_deg(pose)
    np.testing.assert_allclose(back[0], rot, atol=1e-9)
    np.testing.assert_allclose(back[1], tilt, atol=1e-9)
    np.testing.assert_allclose(back[2], psi, atol=1e-9)
    # Through float32 storage (as in a .cs file) the matrix is kept to ~1e-7.
    a32 = pose_to_relion_matrix(pose.astype(np.float32))
    np.testing.assert_allclose(a32, euler_zyz_to_matrix(rot, tilt, psi), atol=2e-6)


def test_pose_convention_matches_pyem_and_cryodrgn():
    """A = Rodrigues(pose)^T: pyem's expmap (transposed skew) fed to RELION's Euler decomposition,
    cryoDRGN's expmap(pose).T, and scipy's intrinsic ZYZ all agree with the converter."""
    for pose in Rotation.random(50, random_state=2).as_rotvec():
        a = pose_to_relion_matrix(pose)[0]
        np.testing.assert_allclose(a, rodrigues(pose).T, atol=1e-12)
        np.testing.assert_allclose(a, pyem_expmap(pose), atol=1e-12)
        rot, tilt, psi = pose_to_euler_deg(pose)
        scipy_angles = np.rad2deg(Rotation.from_rotvec(pose).as_euler("ZYZ"))
        np.testing.assert_allclose(euler_zyz_to_matrix(*scipy_angles), a, atol=1e-12)
        np.testing.assert_allclose(euler_zyz_to_matrix(rot, tilt, psi)[0], a, atol=1e-12)


def gaussian_blob_map(box, px, centre_A, sigma_A=2.5):
    """A single Gaussian at ``centre_A`` = (x, y, z) Angstrom from the box centre; [z, y, x]."""
    c = box // 2
    z, y, x = (np.indices((box,) * 3) - c) * px
    r2 = (x - centre_A[0]) ** 2 + (y - centre_A[1]) ** 2 + (z - centre_A[2]) ** 2
    return np.exp(-0.5 * r2 / sigma_A**2).astype(np.float32)


def test_projection_geometry_from_cryosparc_fields():
    """Physics: with R = Rodrigues(pose), a density point r0 of the map appears in the image at
    (R^T r0)_xy + box centre - shift * psize (cryoSPARC's meaning of pose/shift as used by pyem
    and cryoDRGN). The converted particle, through the core's projector, puts the blob there."""
    box, px = 48, 1.5
    r0 = np.array([9.0, -6.0, 4.0])
    vol = gaussian_blob_map(box, px, r0)
    ref = make_padded_reference(vol, 0.5)
    band = make_band(box, px, 0.0, 0.5 / px)
    group = OpticsGroup(1, "g", 300.0, 2.7, 0.1, px, box)
    n = 6
    rng = np.random.default_rng(3)
    dset = Dataset.allocate(n, PARTICLE_FIELDS_CS)
    dset["blob/path"] = np.full(n, "J1/stack.mrc", dtype=object)
    dset["blob/shape"] = np.full((n, 2), box)
    dset["blob/psize_A"] = px
    dset["ctf/accel_kv"], dset["ctf/cs_mm"], dset["ctf/amp_contrast"] = 300.0, 2.7, 0.1
    dset["ctf/df1_A"] = dset["ctf/df2_A"] = 10000.0
    dset["ctf/scale"] = 1.0
    pose = Rotation.random(n, random_state=4).as_rotvec()
    shift_px = rng.uniform(-2.5, 2.5, (n, 2))
    dset["alignments3D/pose"] = pose
    dset["alignments3D/shift"] = shift_px
    dset["alignments3D/psize_A"] = px
    groups, particles, _, _ = relion_params_from_cryosparc(dset)
    images = band_to_images(shifted_projections(pixel_terms(groups[1], band), particles, ref, px), band)
    yy, xx = (np.indices((box, box)) - box // 2) * px
    errors = {(rt, sign): [] for rt in (True, False) for sign in (1, -1)}
    for i in range(n):
        img = images[i]
        peak = np.unravel_index(np.argmax(img), img.shape)
        w = img * ((yy - yy[peak]) ** 2 + (xx - xx[peak]) ** 2 < 6.0**2)
        found = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
        r = Rotation.from_rotvec(pose[i]).as_matrix()
        for rt, sign in errors:
            expected = ((r.T if rt else r) @ r0)[:2] - sign * shift_px[i] * px
            errors[(rt, sign)].append(np.linalg.norm(found - expected))
    worst = {k: max(v) for k, v in errors.items()}
    # The stated convention (R^T, centre - shift) fits every particle to the centroid's accuracy;
    # the alternatives (R instead of R^T, or the opposite shift sign) miss some by > 1.5 A.
    assert worst[(True, 1)] < 0.3, worst
    assert min(v for k, v in worst.items() if k != (True, 1)) > 1.5, worst
    assert group.box_size == box


def test_prediction_same_via_cryosparc_fields(small_map, tmp_path):
    """predict_band on particles converted RELION -> .cs -> RELION equals the RELION-path one
    (float32 storage of the .cs fields is the only difference)."""
    import starfile
    from relion_tools import optics_table, particle_table

    from csrefine.relion.star_io import read_particle_star
    from csrefine.simulate import random_particles

    box, px = 64, 1.6
    rng = np.random.default_rng(5)
    p = random_particles(40, rng, optics_group=2)
    p.phase_shift_deg[:] = rng.uniform(0, 90, 40)
    p.bfactor_A2[:] = rng.uniform(0, 50, 40)
    p.ctf_scale[:] = rng.uniform(0.8, 1.2, 40)
    g2 = OpticsGroup(2, "og2", 200.0, 1.4, 0.07, px, box)
    star_path = tmp_path / "p.star"
    starfile.write({"optics": optics_table([g2]), "particles": particle_table(p, "s.mrcs")},
                   star_path, overwrite=True)
    star = read_particle_star(star_path)
    dset = cryosparc_dataset_from_relion(star, tmp_path, base_dir=tmp_path)
    dset.save(tmp_path / "p.cs")
    groups, conv, paths, idx = relion_params_from_cryosparc(Dataset.load(tmp_path / "p.cs"), tmp_path)
    assert set(groups) == {2} and groups[2].cs_mm == pytest.approx(1.4)
    assert groups[2].voltage_kv == 200.0 and groups[2].amplitude_contrast == pytest.approx(0.07)
    assert paths[0] == str(tmp_path / "s.mrcs") and list(idx[:3]) == [0, 1, 2]
    refs = {h: make_padded_reference(small_map, 0.5, margin=1.01) for h in (1, 2)}
    band = make_band(box, px, 1 / 30.0, 1 / 3.5)
    expected = predict_band(star.groups[2], star.particles, refs, band)
    got = predict_band(groups[2], conv, refs, band)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 2e-3 * scale
    np.testing.assert_array_equal(conv.half_set, star.particles.half_set)
    np.testing.assert_array_equal(conv.optics_group, star.particles.optics_group)


# ----------------------------------------------------------------------------- units, ids, psize
def test_units_ids_and_shift_rescaling():
    rng = np.random.default_rng(7)
    dset = with_alignments(t20s_dataset(), rng, psize=0.6575 * 2)  # aligned at bin 2
    dset["ctf/exp_group_id"] = [0, 0, 0, 0, 0, 3, 3, 3, 3, 3]
    dset["ctf/phase_shift_rad"] = np.pi / 4
    dset["ctf/bfactor"] = 12.5
    groups, p, paths, idx = relion_params_from_cryosparc(dset, "/proj")
    assert sorted(groups) == [1, 4]
    np.testing.assert_array_equal(p.optics_group, [1] * 5 + [4] * 5)
    np.testing.assert_array_equal(p.half_set, np.arange(10) % 2 + 1)
    np.testing.assert_allclose(p.origin_x_A, np.asarray(dset["alignments3D/shift"])[:, 0] * 1.315,
                               rtol=1e-6)
    np.testing.assert_allclose(p.origin_y_A, np.asarray(dset["alignments3D/shift"])[:, 1] * 1.315,
                               rtol=1e-6)
    np.testing.assert_allclose(p.defocus_angle_deg,
                               np.rad2deg(np.asarray(dset["ctf/df_angle_rad"], dtype=np.float64)))
    np.testing.assert_allclose(p.phase_shift_deg, 45.0, rtol=1e-6)
    np.testing.assert_allclose(p.bfactor_A2, 12.5)
    assert paths[0] == "/proj/J30/extract/012951868257382468663_14sep05c_00024sq_00004hl_00002es" \
                      ".frames_patch_aligned_doseweighted_particles.mrc"
    assert idx.tolist() == [176, 210, 325, 29, 613, 398, 177, 446, 22, 92]


def test_real_t20s_rows_map_without_loss():
    raw = t20s_dataset()
    assert len(raw) == 10 and "ctf/anisomag" in raw.fields()
    with pytest.raises(InputError, match="no alignments3D"):
        relion_params_from_cryosparc(raw)
    dset = with_alignments(raw, np.random.default_rng(0))
    groups, p, paths, idx = relion_params_from_cryosparc(dset, None)
    g = groups[1]
    assert list(groups) == [1] and g.name == "exposure group 0"
    assert (g.voltage_kv, g.box_size) == (300.0, 448)
    assert g.cs_mm == np.float32(2.7) and g.amplitude_contrast == np.float32(0.1)
    assert g.pixel_size_A == np.float32(0.6575)
    # Exact: float32 -> float64 is lossless; radians -> degrees -> radians to round-off.
    np.testing.assert_array_equal(p.defocus_u_A, np.asarray(raw["ctf/df1_A"]).astype(np.float64))
    np.testing.assert_array_equal(p.defocus_v_A, np.asarray(raw["ctf/df2_A"]).astype(np.float64))
    np.testing.assert_allclose(np.deg2rad(p.defocus_angle_deg), raw["ctf/df_angle_rad"], rtol=1e-15)
    np.testing.assert_array_equal(p.ctf_scale, 1.0)
    np.testing.assert_array_equal(p.bfactor_A2, 0.0)
    assert paths == [str(s) for s in raw["blob/path"]]
    np.testing.assert_array_equal(idx, raw["blob/idx"])
    # Back to cryoSPARC fields: the same ctf values (reverse converter).
    out = updated_dataset(dset, type("R", (), {"groups": []})())
    for f in raw.fields():
        np.testing.assert_array_equal(out[f], raw[f])


def test_mixed_cs_within_exposure_group_refused():
    dset = with_alignments(t20s_dataset(), np.random.default_rng(0))
    cs = np.array(dset["ctf/cs_mm"])
    cs[5] = 2.0
    dset["ctf/cs_mm"] = cs
    with pytest.raises(InputError, match="ctf/cs_mm is not constant within exposure group 0"):
        relion_params_from_cryosparc(dset)
    dset["ctf/exp_group_id"] = (np.arange(10) == 5).astype(np.uint32)  # its own group: fine
    groups, _, _, _ = relion_params_from_cryosparc(dset)
    assert groups[1].cs_mm == pytest.approx(2.7) and groups[2].cs_mm == pytest.approx(2.0)


def test_export_marker_and_missing_split():
    dset = with_alignments(t20s_dataset(), np.random.default_rng(0))
    paths = np.array([">" + str(s) for s in dset["blob/path"]], dtype=object)
    dset["blob/path"] = paths
    _, _, out, _ = relion_params_from_cryosparc(dset, "/p")
    assert out[0].startswith("/p/J30/extract/")
    with pytest.raises(InputError, match="alignments3D/split"):
        relion_params_from_cryosparc(dset.filter_fields(
            [f for f in dset.fields() if f != "alignments3D/split"]))


def test_updated_dataset_writes_cs_and_defocus_per_group():
    from csrefine.results import GroupResult, Refinement

    dset = with_alignments(t20s_dataset(), np.random.default_rng(0))
    dset["ctf/exp_group_id"] = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]

    def result(og, refined, cs, off):
        return GroupResult(og, "g", 5, refined, "", 2.7, cs, 0.01, None, [], off, None, 0.6575,
                           None, None, [20, 3], 300.0)

    ref = Refinement([result(1, True, 3.05, 42.0), result(2, False, 2.7, 0.0)], np.zeros(3), 3.0,
                     [20, 3], "numpy", {})
    out = updated_dataset(dset, ref)
    np.testing.assert_allclose(out["ctf/cs_mm"], [3.05] * 5 + [2.7] * 5, rtol=1e-6)
    np.testing.assert_allclose(out["ctf/df1_A"][:5], np.asarray(dset["ctf/df1_A"][:5]) + 42.0,
                               rtol=1e-7)
    np.testing.assert_array_equal(out["ctf/df2_A"][5:], dset["ctf/df2_A"][5:])
    for f in dset.fields():
        if f not in ("ctf/cs_mm", "ctf/df1_A", "ctf/df2_A"):
            np.testing.assert_array_equal(out[f], dset[f])
    assert np.all(np.asarray(dset["ctf/cs_mm"]) == np.float32(2.7))  # input untouched


# ----------------------------------------------------------------------------- cross-path
@pytest.mark.slow
@pytest.mark.parametrize("negate", [False, True], ids=["sign+1", "sign-1"])
def test_cross_path_same_cs_simulated(tmp_path, negate, cross_paths):
    """A simulated RELION data set (2 optics groups, true Cs 3.0 / 2.7 mm, nominal 2.7) refines to
    the same Cs per group through the cryoSPARC path as through the RELION path (< 0.001 mm)."""
    from csrefine.options import RefineOptions
    from csrefine.relion.example import make_example

    info = make_example(tmp_path, n_per_group=(400, 400), model_path=PACKAGED_MODEL, seed=3)
    options = RefineOptions(device="cpu", min_particles=50)
    relion, cryo, dset = cross_paths.refine_both(info["star"], info["half1"], info["half2"],
                                            info["mask"], tmp_path, options, negate_copy=negate)
    cross_paths.assert_same_cs(relion, cryo, tmp_path, dset)
    assert abs(cryo.group(1).cs_refined_mm - 3.0) < 0.1
    assert abs(cryo.group(2).cs_refined_mm - 2.7) < 0.1


@pytest.mark.relion
def test_cross_path_same_cs_relion_project(tmp_path, small_map, relion, cross_paths):
    """~500 particles simulated by relion_project (true Cs 3.0 / 2.7 mm, nominal 2.7 in the STAR
    given to csrefine): both paths give the same Cs per group."""
    import starfile
    from relion_tools import optics_table, particle_table, project

    from csrefine.fsc import soft_spherical_mask
    from csrefine.images import write_map
    from csrefine.options import RefineOptions
    from csrefine.simulate import random_particles

    box, px = 64, 1.6
    rng = np.random.default_rng(11)
    parts = [random_particles(250, rng, optics_group=g) for g in (1, 2)]
    from csrefine.model import Particles
    p = Particles(**{f: np.concatenate([getattr(q, f) for q in parts])
                     for f in parts[0].__dataclass_fields__})
    true = [OpticsGroup(1, "g1", 300.0, 3.0, 0.1, px, box), OpticsGroup(2, "g2", 300.0, 2.7, 0.1, px, box)]
    write_map(tmp_path / "map.mrc", small_map, px)
    starfile.write({"optics": optics_table(true), "particles": particle_table(p, "none.mrcs")},
                   tmp_path / "truth.star", overwrite=True)
    simulated = project("map.mrc", "truth.star", "sim", px, white_noise=1.0, cwd=tmp_path)
    blocks = starfile.read(simulated, always_dict=True)
    blocks["optics"]["rlnSphericalAberration"] = 2.7  # nominal
    starfile.write(blocks, tmp_path / "nominal.star", overwrite=True)
    for h in (1, 2):
        noisy = small_map + rng.normal(0, 0.002 * float(small_map.max()), small_map.shape)
        write_map(tmp_path / f"half{h}.mrc", noisy.astype(np.float32), px)
    write_map(tmp_path / "mask.mrc", soft_spherical_mask(box, 0.4 * box - 4), px)
    options = RefineOptions(device="cpu", min_particles=50)
    relion, cryo, dset = cross_paths.refine_both(tmp_path / "nominal.star", tmp_path / "half1.mrc",
                                            tmp_path / "half2.mrc", tmp_path / "mask.mrc",
                                            tmp_path, options)
    cross_paths.assert_same_cs(relion, cryo, tmp_path, dset)
    assert abs(cryo.group(1).cs_refined_mm - 3.0) < 0.15
    assert abs(cryo.group(2).cs_refined_mm - 2.7) < 0.15


def test_cli_cs_input_error_writes_nothing(tmp_path, capsys):
    """``csrefine refine --particles X.cs`` with a missing stack: one-line error, exit 2, no
    output directory, input untouched."""
    from csrefine.cli import main
    from csrefine.images import write_map

    dset = with_alignments(t20s_dataset(), np.random.default_rng(0))
    dset["blob/shape"] = np.full((10, 2), 32)
    cs_file = tmp_path / "in.cs"
    dset.save(cs_file)
    before = cs_file.read_bytes()
    for h in ("a", "b"):
        write_map(tmp_path / f"{h}.mrc", np.zeros((32,) * 3, np.float32), 0.6575)
    out = tmp_path / "out"
    code = main(["refine", "--particles", str(cs_file), "--project-dir", str(tmp_path),
                 "--half-maps", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--out", str(out),
                 "--device", "cpu"])
    assert code == 2
    assert "particle stack not found" in capsys.readouterr().err
    assert not out.exists() and cs_file.read_bytes() == before
