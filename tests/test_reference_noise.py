"""The linear propagation of the half maps' noise (benchmarks/noise_propagation.py, which
benchmarks/reference_noise.py runs on a data set): each link checked against the thing it
linearises."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from csrefine.fit import (
    PhaseModel,
    RadialStatistics,
    SearchRange,
    fit_many,
    fit_phase,
    log_likelihood,
    parameter_scales,
)
from csrefine.projection import make_padded_reference, sample_trilinear

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "noise_propagation.py"
_SPEC = importlib.util.spec_from_file_location("noise_propagation", _PATH)
rn = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = rn  # its dataclasses look their module up there
_SPEC.loader.exec_module(rn)

MODEL = PhaseModel(defocus_factor=-0.062, cs_factor=1.2e5)
K_MAX = 1 / 3.0


def radial_from_truth(rng, ddf=15.0, dcs=0.03, n_shells=12, per_shell=8, noise=0.05):
    """Pooled statistics of many particles with random CTF phases whose observations follow
    delta(ddf, dcs), with Gaussian noise on D and E."""
    k = np.linspace(1 / 12, K_MAX, n_shells * per_shell)
    k2 = k * k
    shell = np.repeat(np.arange(n_shells), per_shell)
    g = rng.uniform(0, 40, (400, k.size))  # particles' CTF phases at each bin
    sg, cg = np.sin(g), np.cos(g)
    a, b, c = (sg * sg).sum(0), (sg * cg).sum(0), (cg * cg).sum(0)
    delta = MODEL.delta(ddf, dcs, k2)
    amp = 0.8 * np.exp(-k2 * 20)
    # X = amp * (cos(delta) u + sin(delta) v): D = sum u X, E = sum v X with u = -sin g, v = -cos g
    d = amp * (np.cos(delta) * a + np.sin(delta) * b) + noise * rng.normal(size=k.size) * np.sqrt(a)
    e = amp * (np.cos(delta) * b + np.sin(delta) * c) + noise * rng.normal(size=k.size) * np.sqrt(c)
    sums = np.stack([a, b, c, d, e])
    return RadialStatistics(sums[None], k2, shell, np.full(n_shells, noise**2), shell), sums


def test_likelihood_gradient_matches_finite_differences():
    radial, sums = radial_from_truth(np.random.default_rng(1))
    grad = rn.likelihood_gradient_sums(radial, sums, MODEL, 12.0, 0.02)
    h = 1e-4 * np.abs(sums).max()
    for j, b in [(0, 3), (1, 20), (2, 50), (3, 7), (4, 90), (3, 95)]:
        up, down = sums.copy(), sums.copy()
        up[j, b] += h
        down[j, b] -= h
        numeric = (log_likelihood(radial, up, MODEL, 12.0, 0.02)
                   - log_likelihood(radial, down, MODEL, 12.0, 0.02)) / (2 * h)
        assert grad[j, b] == pytest.approx(float(numeric), rel=1e-4, abs=1e-6 * np.abs(grad).max())


def test_sensitivity_predicts_the_refit():
    rng = np.random.default_rng(2)
    radial, sums = radial_from_truth(rng)
    search = SearchRange(400.0, 0.3)
    best = fit_phase(radial, sums, MODEL, K_MAX, search)
    steps = 0.01 * parameter_scales(MODEL, K_MAX)
    sens = rn.cs_sensitivity(radial, sums, MODEL, best.defocus_offset_A, best.cs_change_mm,
                             best.hessian, steps)
    moved = []
    for _ in range(3):
        dsums = 1e-2 * rng.normal(size=sums.shape) * np.abs(sums)
        refit = fit_many(radial, (sums + dsums)[None], MODEL, K_MAX,
                         (best.defocus_offset_A, best.cs_change_mm))[0]
        actual = refit[1] - best.cs_change_mm
        predicted = float((sens * dsums).sum())
        moved.append(abs(actual))
        assert predicted == pytest.approx(actual, rel=0.05)
    assert max(moved) > 1e-5  # the perturbations did move the fit


def test_splat_is_the_adjoint_of_the_trilinear_slice():
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(16, 16, 16)).astype(np.float32)
    ref = make_padded_reference(vol, 0.4)
    eta = make_padded_reference(rng.normal(size=(16, 16, 16)).astype(np.float32), 0.4)
    coords = rng.uniform(-0.4 * 32, 0.4 * 32, (5, 40, 3))
    weights = rng.normal(size=(5, 40))
    out = np.zeros(ref.data.shape, dtype=np.complex128)
    rn.splat(out, ref, coords, weights)
    direct = np.sum(weights * (sample_trilinear(ref, coords)
                               * np.conj(sample_trilinear(eta, coords))).real)
    assert np.vdot(eta.data, out).real == pytest.approx(direct, rel=1e-5)


def test_noise_realisations_have_the_half_maps_noise_power():
    rng = np.random.default_rng(4)
    signal = rng.normal(size=(24, 24, 24))
    halves = [signal + 0.5 * rng.normal(size=signal.shape) for _ in range(2)]
    model = rn.NoiseModel.from_cropped_halves(*halves, 0.45, 2, 1.0, 24)
    actual = make_padded_reference(((halves[0] - halves[1]) / np.sqrt(2)).astype(np.float32),
                                   0.45).data
    power = np.mean([np.mean(np.abs(model.realisation(rng)) ** 2) for _ in range(8)])
    assert power == pytest.approx(np.mean(np.abs(actual) ** 2), rel=0.05)
