"""cryoSPARC's higher-order CTF fields (Global CTF Refinement): conversion to the core's Zernike
terms and magnification matrix, the particles' choice of the unverified conventions, pass-through
to the output, and the effect on Cs in simulations."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryosparc.dataset import Dataset
from test_cryosparc_convert import t20s_dataset, with_alignments

from csrefine.cryosparc.aberration_choice import (
    MIN_DELTA_LOG_LIKELIHOOD,
    REPORT_KEY,
    choose_conventions,
    decide_field,
)
from csrefine.cryosparc.aberrations import (
    ANISOMAG_DIRECTIONS,
    FIELD_CANDIDATES,
    FIELD_SETTING,
    MOST_LIKELY_CONVENTION,
    Convention,
    GroupAberrations,
    aberration_terms,
    anisomag_matrix,
)
from csrefine.cryosparc.convert import (
    PARTICLE_FIELDS_CS,
    euler_deg_to_pose,
    relion_params_from_cryosparc,
    updated_dataset,
)
from csrefine.cryosparc.fields import ABERRATION_FIELDS
from csrefine.ctf import electron_wavelength_A
from csrefine.errors import InputError
from csrefine.model import OpticsGroup
from csrefine.zernike import even_zernike_phase, odd_zernike_phase

VALUES = GroupAberrations(tilt_A=np.array([2.4e4, -1.5e4]), trefoil_A=np.array([1500.0, -1000.0]),
                          tetra_A=np.array([4000.0, -3000.0, 2000.0, 1000.0]),
                          anisomag=np.array([0.012, 0.004, -0.002, -0.006]),
                          shift_A=np.array([0.4, -0.3]))


def only(field: str, values: GroupAberrations = VALUES) -> GroupAberrations:
    """``values`` with every field but ``field`` zeroed."""
    return GroupAberrations(**{f.split("/")[1]: (values.value(f) if f == field
                                                 else np.zeros(n))
                               for f, n in ABERRATION_FIELDS.items()})


# ----------------------------------------------------------------------------- the formulas
def target_phase(field: str, values: GroupAberrations, sign: int, lam: float, kx, ky):
    """The phase of each field as the public sources write it (k in 1/Å, φ = atan2(ky, kx))."""
    k = np.hypot(kx, ky)
    phi = np.arctan2(ky, kx)
    if field == "ctf/tilt_A":
        t = values.tilt_A
        return sign * 2 * np.pi * lam**2 * k**2 * (t[0] * kx + t[1] * ky)
    if field == "ctf/trefoil_A":
        r = values.trefoil_A
        return sign * (2 * np.pi / 3) * lam**2 * k**3 * (r[0] * np.cos(3 * phi) + r[1] * np.sin(3 * phi))
    if field == "ctf/tetra_A":
        q = values.tetra_A
        return sign * lam**3 * k**4 * (2 * np.pi * (q[0] * np.cos(2 * phi) + q[1] * np.sin(2 * phi))
                                       + 0.5 * np.pi * (q[2] * np.cos(4 * phi) + q[3] * np.sin(4 * phi)))
    s = values.shift_A
    return sign * 2 * np.pi * (s[0] * kx + s[1] * ky)


SIGNED = [(f, s) for f in ("ctf/tilt_A", "ctf/trefoil_A", "ctf/tetra_A", "ctf/shift_A")
          for s in FIELD_CANDIDATES[f]]


@pytest.mark.parametrize("field,sign", SIGNED)
def test_zernike_coefficients_reproduce_the_phase(field, sign):
    """For each field and candidate sign, the Zernike sum the core evaluates equals the source's
    formula on a k grid up to 0.5 1/Å (both parities checked: the other one stays empty)."""
    kv = 300.0
    lam = electron_wavelength_A(kv)
    k = np.linspace(-0.5, 0.5, 61)
    kx, ky = np.meshgrid(k, k)
    values = only(field)
    convention = replace(MOST_LIKELY_CONVENTION, **{FIELD_SETTING[field]: sign})
    terms = aberration_terms(values, convention, kv)
    expected = target_phase(field, values, sign, lam, kx, ky)
    even = field == "ctf/tetra_A"
    got = (even_zernike_phase if even else odd_zernike_phase)(
        terms["even_zernike"] if even else terms["odd_zernike"], kx, ky)
    assert np.abs(expected).max() > 1e-3  # a phase worth checking
    np.testing.assert_allclose(got, expected, atol=1e-9 * np.abs(expected).max())
    assert (terms["odd_zernike"] if even else terms["even_zernike"]).size == 0
    np.testing.assert_array_equal(terms["mag_matrix"], np.eye(2))


def test_all_fields_together_add_up():
    kv, lam = 200.0, electron_wavelength_A(200.0)
    k = np.linspace(-0.4, 0.4, 41)
    kx, ky = np.meshgrid(k, k)
    c = Convention(tilt_sign=1, trefoil_sign=-1, tetra_sign=-1, shift_sign=1, anisomag="I+A^T")
    terms = aberration_terms(VALUES, c, kv)
    odd = sum(target_phase(f, VALUES, getattr(c, FIELD_SETTING[f]), lam, kx, ky)
              for f in ("ctf/tilt_A", "ctf/trefoil_A", "ctf/shift_A"))
    np.testing.assert_allclose(odd_zernike_phase(terms["odd_zernike"], kx, ky), odd, atol=1e-9)
    np.testing.assert_allclose(even_zernike_phase(terms["even_zernike"], kx, ky),
                               target_phase("ctf/tetra_A", VALUES, -1, lam, kx, ky), atol=1e-12)
    np.testing.assert_allclose(terms["mag_matrix"], np.eye(2) + VALUES.anisomag.reshape(2, 2).T)


def test_anisomag_directions():
    a = np.array([0.02, 0.005, -0.003, -0.01])
    m = np.eye(2) + a.reshape(2, 2)
    np.testing.assert_allclose(anisomag_matrix(a, "I+A"), m)
    np.testing.assert_allclose(anisomag_matrix(a, "inv(I+A)") @ m, np.eye(2), atol=1e-15)
    np.testing.assert_allclose(anisomag_matrix(a, "I+A^T"), m.T)
    np.testing.assert_allclose(anisomag_matrix(a, "inv(I+A^T)") @ m.T, np.eye(2), atol=1e-15)
    for d in ANISOMAG_DIRECTIONS:  # zeros: no magnification (not a zero matrix)
        np.testing.assert_array_equal(anisomag_matrix(np.zeros(4), d), np.eye(2))
    with pytest.raises(ValueError, match="direction"):
        anisomag_matrix(a, "A")


# ----------------------------------------------------------------------------- the boundary
def t20s_with(field: str, value, rows=slice(None)) -> Dataset:
    dset = with_alignments(t20s_dataset(), np.random.default_rng(0))
    col = np.array(dset[field])
    col[rows] = value
    dset[field] = col
    return dset


@pytest.mark.parametrize("field", list(ABERRATION_FIELDS))
def test_nonzero_fields_accepted_and_converted(field):
    """Real T20S rows with a non-zero field (formerly refused) convert; the group carries the
    most likely convention's terms."""
    value = {"ctf/tilt_A": [1.2e4, -3e3], "ctf/trefoil_A": [800.0, 300.0],
             "ctf/tetra_A": [2000.0, 0.0, -500.0, 100.0], "ctf/anisomag": [0.01, 0.002, 0.0, -0.01],
             "ctf/shift_A": [0.5, 0.0]}[field]
    dset = t20s_with(field, value)
    groups, _, _, _ = relion_params_from_cryosparc(dset)
    g = groups[1]
    expected = aberration_terms(only(field, GroupAberrations(
        **{f.split("/")[1]: np.asarray(np.float32(value) if f == field else np.zeros(n), float)
           for f, n in ABERRATION_FIELDS.items()})), MOST_LIKELY_CONVENTION, g.voltage_kv)
    np.testing.assert_array_equal(g.even_zernike, expected["even_zernike"])
    np.testing.assert_array_equal(g.odd_zernike, expected["odd_zernike"])
    np.testing.assert_array_equal(g.mag_matrix, expected["mag_matrix"])
    assert g.even_zernike.size + g.odd_zernike.size > 0 or not np.allclose(g.mag_matrix, np.eye(2))


def test_zero_fields_add_nothing():
    """All-zero fields (and absent ones) give exactly the plain optics group."""
    dset = with_alignments(t20s_dataset(), np.random.default_rng(0))
    g = relion_params_from_cryosparc(dset)[0][1]
    plain = OpticsGroup(1, g.name, g.voltage_kv, g.cs_mm, g.amplitude_contrast, g.pixel_size_A,
                        g.box_size)
    for name in ("even_zernike", "odd_zernike", "mag_matrix"):
        np.testing.assert_array_equal(getattr(g, name), getattr(plain, name))
        assert getattr(g, name).shape == getattr(plain, name).shape
    bare = dset.filter_fields([f for f in dset.fields() if f not in ABERRATION_FIELDS])
    g2 = relion_params_from_cryosparc(bare)[0][1]
    assert g2.even_zernike.size == 0 and g2.odd_zernike.size == 0
    np.testing.assert_array_equal(g2.mag_matrix, np.eye(2))


def test_field_must_be_constant_per_exposure_group():
    dset = t20s_with("ctf/tilt_A", [1e4, 0.0], rows=slice(0, 5))
    with pytest.raises(InputError, match=r"ctf/tilt_A\[0\] is not constant within exposure group 0"):
        relion_params_from_cryosparc(dset)
    dset["ctf/exp_group_id"] = [0] * 5 + [1] * 5  # each group constant: fine
    groups = relion_params_from_cryosparc(dset)[0]
    assert groups[1].odd_zernike.size == 6 and groups[2].odd_zernike.size == 0


def test_output_passes_higher_order_fields_through():
    from csrefine.results import GroupResult, Refinement

    dset = with_alignments(t20s_dataset(), np.random.default_rng(0))
    for field, n in ABERRATION_FIELDS.items():
        dset[field] = np.tile(np.arange(1, n + 1) * 0.01, (len(dset), 1))
    result = GroupResult(1, "g", 10, True, "", 2.7, 3.1, 0.01, None, [], 25.0, None, 0.6575,
                         None, None, [20, 3], 300.0)
    out = updated_dataset(dset, Refinement([result], np.zeros(3), 3.0, [20, 3], "numpy", {}))
    for field in ABERRATION_FIELDS:
        np.testing.assert_array_equal(out[field], dset[field])
    for field in dset.fields():
        if field not in ("ctf/cs_mm", "ctf/df1_A", "ctf/df2_A"):
            np.testing.assert_array_equal(out[field], dset[field])
    np.testing.assert_allclose(out["ctf/cs_mm"], 3.1, rtol=1e-6)


# ----------------------------------------------------------------------------- the decision rule
def test_decide_field_margin_and_fallback():
    from csrefine.conventions import CandidateScore

    cands = [replace(MOST_LIKELY_CONVENTION, tilt_sign=s) for s in (-1, 1)]
    keys = [b"a", b"b"]

    def decide(ll_a, ll_b):
        scores = {b"a": CandidateScore(ll_a, 0, 0, None), b"b": CandidateScore(ll_b, 0, 0, None)}
        return decide_field("ctf/tilt_A", 0, np.array([1.0, 2.0]), cands, keys, scores, 100)

    d = decide(10.0, 10.0 + MIN_DELTA_LOG_LIKELIHOOD + 1)
    assert d.decided_by_data and d.chosen.tilt_sign == 1 and d.delta_log_likelihood == pytest.approx(4)
    d = decide(10.0, 10.0 + MIN_DELTA_LOG_LIKELIHOOD - 1)  # too close: the most likely one
    assert not d.decided_by_data and d.chosen.tilt_sign == -1 and d.best_by_data.tilt_sign == 1
    assert "cannot tell" in d.line()
    same = decide_field("ctf/anisomag", 0, np.zeros(4), [MOST_LIKELY_CONVENTION] * 2, [b"a", b"a"],
                        {b"a": CandidateScore(1.0, 0, 0, None)}, 10)
    assert same.delta_log_likelihood is None and not same.decided_by_data


def test_no_nonzero_fields_leaves_inputs_alone():
    from csrefine.run import RefinementInputs

    dset = with_alignments(t20s_dataset(), np.random.default_rng(0))
    groups, parts, _, _ = relion_params_from_cryosparc(dset)
    inputs = RefinementInputs(groups, parts, None, (None, None), source=dset)
    assert choose_conventions(inputs) is inputs  # no maps or images touched


# ----------------------------------------------------------------------------- simulations
BOX, PX, CS_TRUE, CS_NOMINAL = 64, 1.6, 3.0, 2.7


def simulate_cs_dataset(root: Path, structure, values: GroupAberrations, convention: Convention,
                        n: int, seed: int = 1) -> Path:
    """Particles simulated with csrefine's forward model (true Cs 3.0 mm, the fields ``values``
    under ``convention``) written as a cryoSPARC .cs (nominal Cs 2.7 mm, the fields set), with
    stack and half maps; returns the .cs path."""
    from csrefine.atomic_map import density_map
    from csrefine.images import write_map, write_stack
    from csrefine.simulate import random_particles, simulate_images

    rng = np.random.default_rng(seed)
    vol = density_map(structure, BOX, PX, b_factor_A2=10.0)
    terms = aberration_terms(values, convention, 300.0)
    truth = OpticsGroup(1, "truth", 300.0, CS_TRUE, 0.1, PX, BOX, **terms)
    p = random_particles(n, rng)
    write_stack(root / "stack.mrcs", simulate_images(vol, truth, p, 0.6 * float(vol.sum(axis=0).std()),
                                                     rng), PX)
    for h in (1, 2):
        noisy = vol + rng.normal(0, 0.01 * vol.max(), vol.shape).astype(np.float32)
        write_map(root / f"half{h}.mrc", noisy, PX)
    d = Dataset.allocate(n, PARTICLE_FIELDS_CS)
    d["blob/path"] = np.full(n, "stack.mrcs", dtype=object)
    d["blob/idx"] = np.arange(n)
    d["blob/shape"] = np.full((n, 2), BOX)
    d["blob/psize_A"] = PX
    d["blob/sign"] = 1.0
    d["ctf/accel_kv"], d["ctf/cs_mm"], d["ctf/amp_contrast"], d["ctf/scale"] = 300.0, CS_NOMINAL, 0.1, 1.0
    d["ctf/df1_A"], d["ctf/df2_A"] = p.defocus_u_A, p.defocus_v_A
    d["ctf/df_angle_rad"] = np.deg2rad(p.defocus_angle_deg)
    for field in ABERRATION_FIELDS:
        d[field] = np.tile(values.value(field), (n, 1))
    d["alignments3D/split"] = p.half_set - 1
    d["alignments3D/shift"] = np.stack([p.origin_x_A, p.origin_y_A], axis=1) / PX
    d["alignments3D/pose"] = euler_deg_to_pose(p.rot_deg, p.tilt_deg, p.psi_deg)
    d["alignments3D/psize_A"] = PX
    path = root / "particles.cs"
    d.save(path)
    return path


def refine_cs(root: Path, cs_path: Path, out: str, zero_fields: bool = False):
    """Refine ``cs_path`` through ``csrefine.cryosparc.offline.run`` (fields zeroed in a copy if
    ``zero_fields``); returns (group 1's result, csrefine.json, progress lines)."""
    from csrefine.cryosparc import offline
    from csrefine.options import RefineOptions

    if zero_fields:
        d = Dataset.load(cs_path)
        for field in ABERRATION_FIELDS:
            d[field] = 0
        cs_path = root / "zeroed.cs"
        d.save(cs_path)
    lines = []
    refinement = offline.run(cs_path, root / "half1.mrc", root / "half2.mrc", root / out,
                             project_dir=root, progress=lines.append,
                             options=RefineOptions(device="cpu", threads=2, min_particles=50))
    report = json.loads((root / out / "csrefine.json").read_text())
    return refinement.group(1), report, lines


def test_honouring_the_fields_recovers_cs(tmp_path, structure, capsys):
    """Tilt 0.8 mrad, trefoil, tetrafoil and 1.2% anisotropic magnification, simulated with
    tilt sign and anisomag direction *opposite* to the most likely ones: the particles choose
    the simulated convention, and Cs comes out right; ignoring the fields biases it."""
    values = replace(VALUES, shift_A=np.zeros(2))
    truth = Convention(tilt_sign=1, trefoil_sign=-1, tetra_sign=1, shift_sign=-1,
                       anisomag="inv(I+A)")
    cs_path = simulate_cs_dataset(tmp_path, structure, values, truth, n=600)
    honoured, report, lines = refine_cs(tmp_path, cs_path, "honoured")
    ignored, report0, _ = refine_cs(tmp_path, cs_path, "ignored", zero_fields=True)
    decisions = report[REPORT_KEY]["0"]
    with capsys.disabled():
        print(f"\nCs true {CS_TRUE}, nominal {CS_NOMINAL}: honoured {honoured.cs_refined_mm:.4f} "
              f"+- {honoured.cs_sigma_mm:.4f} mm, ignored {ignored.cs_refined_mm:.4f} "
              f"+- {ignored.cs_sigma_mm:.4f} mm")
        for field, d in decisions.items():
            print(f"  {field}: {d['convention']} (decided by data: {d['decided_by_data']}, "
                  f"Δ log L {d['delta_log_likelihood']:.1f})")
    assert set(decisions) == {"ctf/tilt_A", "ctf/trefoil_A", "ctf/tetra_A", "ctf/anisomag"}
    for field, d in decisions.items():
        assert d["convention"] == truth.label(field), (field, d)
    for field in ("ctf/tilt_A", "ctf/trefoil_A", "ctf/anisomag"):
        assert decisions[field]["decided_by_data"], field
        assert decisions[field]["delta_log_likelihood"] >= MIN_DELTA_LOG_LIKELIHOOD
    assert any("the particles chose" in line for line in lines)
    assert REPORT_KEY not in report0
    assert abs(honoured.cs_refined_mm - CS_TRUE) < max(0.04, 4 * honoured.cs_sigma_mm)
    assert abs(ignored.cs_refined_mm - CS_TRUE) > 0.2  # the anisotropic magnification's bias
    out = Dataset.load(tmp_path / "honoured" / "particles.cs")
    source = Dataset.load(cs_path)
    for field in ABERRATION_FIELDS:
        np.testing.assert_array_equal(out[field], source[field])


PER_FIELD = {"ctf/tilt_A": 1, "ctf/trefoil_A": 1, "ctf/tetra_A": -1, "ctf/shift_A": 1,
             "ctf/anisomag": "I+A^T"}


@pytest.mark.slow
@pytest.mark.parametrize("field", list(PER_FIELD))
def test_each_field_alone(tmp_path, structure, capsys, field):
    """One field at a time, simulated in a convention other than the most likely one: Cs when
    honoured vs ignored, the convention the particles chose and the margin."""
    truth = replace(MOST_LIKELY_CONVENTION, **{FIELD_SETTING[field]: PER_FIELD[field]})
    cs_path = simulate_cs_dataset(tmp_path, structure, only(field), truth, n=600, seed=2)
    honoured, report, _ = refine_cs(tmp_path, cs_path, "honoured")
    ignored, _, _ = refine_cs(tmp_path, cs_path, "ignored", zero_fields=True)
    d = report[REPORT_KEY]["0"][field]
    with capsys.disabled():
        print(f"\n{field} {d['values']}: Cs honoured {honoured.cs_refined_mm:.4f} +- "
              f"{honoured.cs_sigma_mm:.4f}, ignored {ignored.cs_refined_mm:.4f} +- "
              f"{ignored.cs_sigma_mm:.4f} (true {CS_TRUE}); chose {d['convention']}, "
              f"Δ log L {d['delta_log_likelihood']:.1f}, decided by data {d['decided_by_data']}")
    if d["decided_by_data"]:
        assert d["convention"] == truth.label(field)
    else:  # too small to matter: the most likely convention, and Cs unharmed by either
        assert d["convention"] == MOST_LIKELY_CONVENTION.label(field)
    assert abs(honoured.cs_refined_mm - CS_TRUE) < max(0.04, 4 * honoured.cs_sigma_mm)
