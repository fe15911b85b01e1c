"""The half maps' noise in the Cs sigma.

Every particle of a half set is predicted from the same noisy half map, so the map's noise moves
the fitted Cs of all particles together. The jackknife over particle cells sees only what differs
between cells: image noise and the part of the map noise that particles meet in uncorrelated ways.
The shared part, which all cells see alike, is measured here by linear propagation:

1. The sensitivity of the fitted Cs change to the pooled statistics, from the profiled
   likelihood's derivatives at the optimum (:func:`cs_sensitivity`): d(theta) = H^-1 J dS, H the
   Hessian of -log L, J = d(grad log L)/dS.
2. A reference perturbation eta (the half map's noise, in the padded transform) changes the
   statistics of particle i at pixel p through Re(P eta*) (P the projection): with the
   observation replaced by its fitted prediction X = -alpha_s w sin(gamma + delta) P (no image
   noise, which the jackknife already counts), the Cs change is Re <eta, G>, where G is the
   back-projection (trilinear splat) of r_ip * slice_ip over the particles' samples and

       r = w^2 [alpha_s sin(gamma + delta)(a_D sin gamma + a_E cos gamma)
                + 2 (a_A sin^2 gamma + a_B sin gamma cos gamma + a_C cos^2 gamma)]

   (a_S the per-pixel sensitivities).
3. G is built from a sample of each half set, split in two halves a and b. E[G_a G_b*] holds only
   the shared (particle-averaged) part, so the shared variance is
   (2 M / M_sample)^2 E[Re<eta, G_a> Re<eta, G_b>], the expectation taken over noise
   realisations eta with the half map's noise spectrum: phase-randomised copies of
   (half1 - half2) / sqrt(2), Fourier cropped to the band, padded exactly as the references are.

The half maps' noise is assumed independent between the halves and of the same spectrum (true of
gold-standard half maps). Cost: one trilinear splat of the sample (at most SAMPLE_PER_HALF
particles per half set) and REALISATIONS small padded transforms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csrefine.fit import PhaseModel, RadialStatistics, radial_bins, shell_terms
from csrefine.forward import PixelTerms, particle_envelope, particle_gamma
from csrefine.geometry import euler_zyz_to_matrix
from csrefine.model import Particles
from csrefine.projection import (
    PaddedReference,
    central_slice_coordinates,
    make_padded_reference,
    trilinear_corners,
)

#: Particles per half set whose samples are back-projected (split in two halves a, b).
SAMPLE_PER_HALF = 1000
#: Noise realisations of the half map averaged over.
REALISATIONS = 48
#: Particles per back-projection batch (memory: batch * band pixels * 8 corners).
SPLAT_BATCH = 64


@dataclass(frozen=True)
class NoiseModel:
    """Noise realisations of a half map as the references hold it.

    amplitude : |rfftn| of (half1 - half2) / sqrt(2) Fourier cropped to the band's grid (n^3 real
        map): the noise of one half map. k_max_px, pad, margin, box : as the references were built
        (:func:`csrefine.projection.make_padded_reference`, cycles per cropped-grid pixel).
    """

    amplitude: np.ndarray
    n: int
    k_max_px: float
    pad: int
    margin: float
    box: int
    workers: int = 1

    @classmethod
    def from_cropped_halves(cls, small1: np.ndarray, small2: np.ndarray, k_max_px: float,
                            pad: int, margin: float, box: int, workers: int = 1) -> NoiseModel:
        diff = (np.asarray(small1, np.float64) - np.asarray(small2, np.float64)) / np.sqrt(2.0)
        return cls(np.abs(np.fft.rfftn(diff)), diff.shape[0], k_max_px, pad, margin, box, workers)

    def realisation(self, rng: np.random.Generator) -> np.ndarray:
        """One noise realisation's padded transform (the ``data`` of a PaddedReference)."""
        # random phases with the Hermitian symmetry of a real map: those of white noise
        white = np.fft.rfftn(rng.standard_normal((self.n,) * 3))
        phase = white / np.maximum(np.abs(white), 1e-300)
        noise = np.fft.irfftn(self.amplitude * phase, s=(self.n,) * 3, axes=(0, 1, 2))
        return make_padded_reference(noise.astype(np.float32), self.k_max_px, self.pad,
                                     self.workers, margin=self.margin).data


def _shell_terms(radial: RadialStatistics, sums: np.ndarray, model: PhaseModel, ddf_A: float,
                 dcs_mm: float):
    """:func:`csrefine.fit.shell_terms` with Qq made safe to divide by, and the shells whose
    Qq > 0."""
    c, s, ql, qq = shell_terms(radial, sums, model, ddf_A, dcs_mm)
    ok = qq > 0
    return c, s, ql, np.where(ok, qq, 1.0), ok


def likelihood_gradient_sums(radial: RadialStatistics, sums: np.ndarray, model: PhaseModel,
                             ddf_A: float, dcs_mm: float) -> np.ndarray:
    """d log L / d sums (5, n_bins) at (ddf, dcs): the profiled likelihood of
    :func:`csrefine.fit.log_likelihood` differentiated with respect to each bin's A..E."""
    c, s, ql, qq, ok = _shell_terms(radial, sums, model, ddf_A, dcs_mm)
    ratio = np.where(ok, ql / qq, 0.0)
    lin = (ratio / radial.noise_var)[radial.shell]
    quad = (-ratio**2 / (2.0 * radial.noise_var))[radial.shell]
    return np.stack([quad * c * c, quad * 2.0 * c * s, quad * s * s, lin * c, lin * s])


def shell_amplitude(radial: RadialStatistics, sums: np.ndarray, model: PhaseModel, ddf_A: float,
                    dcs_mm: float) -> np.ndarray:
    """The profiled amplitude alpha_s = Ql_s / Qq_s of each bin's shell, (n_bins,)."""
    _, _, ql, qq, ok = _shell_terms(radial, sums, model, ddf_A, dcs_mm)
    return np.where(ok, ql / qq, 0.0)[radial.shell]


def cs_sensitivity(radial: RadialStatistics, sums: np.ndarray, model: PhaseModel, ddf_A: float,
                   dcs_mm: float, hessian: np.ndarray, steps: tuple[float, float]) -> np.ndarray:
    """d(fitted Cs change, mm) / d sums (5, n_bins) at the optimum (ddf, dcs).

    hessian : 2x2 Hessian of -log L in (ddf_A, dcs_mm); steps : central-difference steps (A, mm)
    for J = d(grad log L)/d sums.
    """
    h_df, h_cs = steps
    j_df = (likelihood_gradient_sums(radial, sums, model, ddf_A + h_df, dcs_mm)
            - likelihood_gradient_sums(radial, sums, model, ddf_A - h_df, dcs_mm)) / (2 * h_df)
    j_cs = (likelihood_gradient_sums(radial, sums, model, ddf_A, dcs_mm + h_cs)
            - likelihood_gradient_sums(radial, sums, model, ddf_A, dcs_mm - h_cs)) / (2 * h_cs)
    jac = np.stack([j_df.ravel(), j_cs.ravel()])
    return np.linalg.solve(hessian, jac)[1].reshape(sums.shape)


@dataclass(frozen=True)
class PixelSensitivity:
    """Per band pixel (m,): the Cs sensitivities a_A..a_E (5, m) (Friedel weight included), the
    shell's amplitude alpha and the fitted phase change delta (radians)."""

    a: np.ndarray
    alpha: np.ndarray
    delta: np.ndarray


def pixel_sensitivity(radial: RadialStatistics, sums: np.ndarray, model: PhaseModel,
                      ddf_A: float, dcs_mm: float, hessian: np.ndarray, steps,
                      terms: PixelTerms, k_box: np.ndarray, friedel: np.ndarray,
                      bins_per_shell: int) -> PixelSensitivity:
    """:func:`cs_sensitivity` and :func:`shell_amplitude` spread to the band pixels (the
    pixel -> bin map of :func:`csrefine.fit.pool`)."""
    fine, _ = radial_bins(k_box, bins_per_shell)
    bin_of_pixel = np.unique(fine, return_inverse=True)[1]
    a_bins = cs_sensitivity(radial, sums, model, ddf_A, dcs_mm, hessian, steps)
    alpha = shell_amplitude(radial, sums, model, ddf_A, dcs_mm)[bin_of_pixel]
    return PixelSensitivity(a_bins[:, bin_of_pixel] * friedel, alpha,
                            model.delta(ddf_A, dcs_mm, terms.k2))


def sample_weights(sens: PixelSensitivity, gamma: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    """r (n, m): the Cs change per unit Re(P eta*) at each particle's pixel (module docstring)."""
    sg, cg = np.sin(gamma), np.cos(gamma)
    a_a, a_b, a_c, a_d, a_e = sens.a
    fitted = sens.alpha * np.sin(gamma + sens.delta)
    return envelope**2 * (fitted * (a_d * sg + a_e * cg)
                          + 2.0 * (a_a * sg * sg + a_b * sg * cg + a_c * cg * cg))


def splat(out: np.ndarray, ref: PaddedReference, coords: np.ndarray, weights: np.ndarray) -> None:
    """Add weights * (interpolated reference) at the trilinear corners of ``coords`` (..., 3)
    into ``out`` (ref.data's shape, complex128), the adjoint of
    :func:`csrefine.projection.sample_trilinear` applied to weights * slice: afterwards
    Re(vdot(eta, out)) = sum weights * Re(slice * conj(eta sampled at coords))."""
    _, corners = trilinear_corners(ref, coords)
    data, flat = ref.data.reshape(-1), out.reshape(-1)
    # the raw interpolation (before a Friedel mate's conjugation) is what the adjoint spreads
    raw = np.zeros(weights.shape, dtype=np.complex128)
    for idx, weight in corners:
        raw += weight * data[idx]
    value = (weights * raw).ravel()
    for idx, weight in corners:
        flat.real += np.bincount(idx.ravel(), weight.ravel() * value.real, minlength=flat.size)
        flat.imag += np.bincount(idx.ravel(), weight.ravel() * value.imag, minlength=flat.size)


def back_projection(sens: PixelSensitivity, terms: PixelTerms, particles: Particles,
                    ref: PaddedReference) -> np.ndarray:
    """G (ref.data's shape, complex128) of ``particles`` (all predicted from ``ref``)."""
    out = np.zeros(ref.data.shape, dtype=np.complex128)
    for start in range(0, len(particles), SPLAT_BATCH):
        part = particles.subset(np.arange(start, min(start + SPLAT_BATCH, len(particles))))
        rot = euler_zyz_to_matrix(part.rot_deg, part.tilt_deg, part.psi_deg)
        coords = central_slice_coordinates(rot, terms.kx_px, terms.ky_px, ref.scale)
        weights = sample_weights(sens, particle_gamma(terms, part), particle_envelope(terms, part))
        splat(out, ref, coords, weights)
    return out


def shared_variance(sens: PixelSensitivity, terms: PixelTerms, particles: Particles,
                    references: dict, reference_of_half: dict, noise: NoiseModel,
                    seed: int = 0) -> tuple[float, float]:
    """The variance (mm^2) of the fitted Cs change from the half maps' noise that the particles
    share (module docstring), and the standard error of that estimate (mm^2; from the noise
    realisations). The estimate is unbiased, so it can come out below zero when the true value is
    near it. particles : the group's; references : half -> PaddedReference; reference_of_half :
    half set -> which half map predicts it."""
    rng = np.random.default_rng(seed)
    pairs = []
    for half in (1, 2):
        members = np.flatnonzero(particles.half_set == half)
        if members.size < 2:
            continue
        take = np.sort(rng.choice(members, min(SAMPLE_PER_HALF, members.size), replace=False))
        ref = references[reference_of_half[half]]
        ga = back_projection(sens, terms, particles.subset(take[0::2]), ref)
        gb = back_projection(sens, terms, particles.subset(take[1::2]), ref)
        scale = (members.size / take[0::2].size) * (members.size / take[1::2].size)
        pairs.append((reference_of_half[half], ga.ravel(), gb.ravel(), scale))
    products = np.zeros(REALISATIONS)
    for i in range(REALISATIONS):
        etas = {h: noise.realisation(rng).ravel() for h in {p[0] for p in pairs}}
        products[i] = sum(scale * np.vdot(etas[h], ga).real * np.vdot(etas[h], gb).real
                          for h, ga, gb, scale in pairs)
    return float(products.mean()), float(products.std(ddof=1) / np.sqrt(REALISATIONS))
