"""Let the particles choose the unverified conventions of cryoSPARC's higher-order CTF fields.

For every exposure group with non-zero ``ctf/tilt_A``, ``trefoil_A``, ``tetra_A``, ``shift_A``
or ``anisomag``, each such field is decided on its own, in :data:`DECISION_ORDER` (largest
effects first): its candidate conventions (:data:`csrefine.cryosparc.aberrations.FIELD_CANDIDATES`)
are scored with the fields decided before at their decision and the others at their most likely
convention, by the maximised log-likelihood of the Cs/defocus fit on a deterministic subsample
of the group (:func:`csrefine.conventions.score_candidates`). The best candidate is
used when it beats the runner-up by at least :data:`MIN_DELTA_LOG_LIKELIHOOD`; otherwise the data
cannot tell (the aberration is too small to matter at this resolution) and the most likely
convention is used. Candidates that give the same model (e.g. a transposed symmetric anisomag)
count as one. Both cryoSPARC loaders call :func:`choose_conventions` on the inputs they return.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from csrefine.conventions import (
    SCORING_PARTICLES,
    CandidateScore,
    score_candidates,
    scoring_context,
    subsample_positions,
)
from csrefine.model import OpticsGroup
from csrefine.options import RefineOptions
from csrefine.results import RefinementInputs

from .aberrations import (
    ANISOMAG_DIRECTIONS,
    FIELD_CANDIDATES,
    FIELD_SETTING,
    MOST_LIKELY_CONVENTION,
    Convention,
    GroupAberrations,
    aberration_terms,
    anisomag_matrix,
    group_aberrations,
)
from .fields import exposure_groups

#: Fields are decided in this order (the largest effects first), each with the ones before at
#: their decision: a badly wrong magnification would otherwise blur the smaller terms' choice.
DECISION_ORDER = ("ctf/anisomag", "ctf/tilt_A", "ctf/shift_A", "ctf/trefoil_A", "ctf/tetra_A")
#: Log-likelihood margin (best minus runner-up) from which the data decide a convention.
MIN_DELTA_LOG_LIKELIHOOD = 3.0
REPORT_KEY = "cryosparc_aberrations"


@dataclass(frozen=True)
class FieldDecision:
    """The convention used for one field of one exposure group.

    values : the field's stored values; chosen : the convention used; best_by_data : the
    best-scoring one; delta_log_likelihood : best minus runner-up (None when every candidate
    gives the same model); decided_by_data : whether the margin reached the threshold (else the
    most likely convention is used); log_likelihoods : candidate label -> log L - best.
    """

    exposure_group: int
    field: str
    values: tuple
    chosen: Convention
    best_by_data: Convention
    delta_log_likelihood: float | None
    decided_by_data: bool
    log_likelihoods: dict
    n_particles: int

    def as_json(self) -> dict:
        return {"values": list(self.values), "convention": self.chosen.label(self.field),
                "best_by_data": self.best_by_data.label(self.field),
                "delta_log_likelihood": self.delta_log_likelihood,
                "decided_by_data": self.decided_by_data,
                "log_likelihood_minus_best": dict(self.log_likelihoods),
                "particles_scored": self.n_particles}

    def line(self) -> str:
        head = f"exposure group {self.exposure_group}: {self.field} {list(self.values)}"
        if self.delta_log_likelihood is None:
            return f"{head}: all candidate conventions give the same model; {self.chosen.label(self.field)}"
        margin = f"Δ log L = {self.delta_log_likelihood:.1f} over the runner-up"
        if self.decided_by_data:
            return (f"{head}: the particles chose {self.chosen.label(self.field)} ({margin}, "
                    f"{self.n_particles} particles)")
        return (f"{head}: the particles cannot tell the convention ({margin} < "
                f"{MIN_DELTA_LOG_LIKELIHOOD:g}, {self.n_particles} particles): too small to matter "
                f"at this resolution; using the most likely, {self.chosen.label(self.field)}")


def _model_key(group: OpticsGroup) -> bytes:
    return b"|".join(np.ascontiguousarray(a, dtype=np.float64).tobytes()
                     for a in (group.even_zernike, group.odd_zernike, group.mag_matrix))


def group_with(group: OpticsGroup, values: GroupAberrations, convention: Convention) -> OpticsGroup:
    """``group`` with the fields ``values`` under ``convention``."""
    return replace(group, **aberration_terms(values, convention, group.voltage_kv))


def decide_field(field: str, exposure_group: int, values: np.ndarray, candidates: list[Convention],
                 keys: list[bytes], scores: dict[bytes, CandidateScore], n: int) -> FieldDecision:
    """Pick the best-scoring candidate; the first (most likely) one if the margin is small.

    candidates : the conventions tried (most likely first); keys : their model keys (equal keys:
    the same model); scores : model key -> score; n : particles scored.
    """
    best_ll = max(scores[k].log_likelihood for k in keys)
    order = sorted(range(len(keys)), key=lambda i: (-scores[keys[i]].log_likelihood, i))
    best = order[0]
    distinct = [i for i in order if keys[i] != keys[best]]
    margin = (scores[keys[best]].log_likelihood - scores[keys[distinct[0]]].log_likelihood
              if distinct else None)
    decided = margin is not None and margin >= MIN_DELTA_LOG_LIKELIHOOD
    chosen = candidates[best] if decided else candidates[0]
    setting = FIELD_SETTING[field]
    lls = {str(getattr(c, setting)): scores[k].log_likelihood - best_ll
           for c, k in zip(candidates, keys)}
    stored = tuple(float(f"{v:.7g}") for v in values)  # float32 values, without float64 digits
    return FieldDecision(exposure_group, field, stored, chosen, candidates[best],
                         None if margin is None else float(margin), decided, lls, n)


def choose_group(inputs: RefinementInputs, group: OpticsGroup, values: GroupAberrations,
                 context) -> tuple[Convention, list[FieldDecision]]:
    """Decide each non-zero field of one group (see the module docstring); returns the
    convention and the decisions (in ABERRATION_FIELDS order)."""
    positions = subsample_positions(inputs.particles, group.optics_group, SCORING_PARTICLES)
    scores: dict[bytes, CandidateScore] = {}
    noise = None
    convention = MOST_LIKELY_CONVENTION
    eid = group.optics_group - 1
    decisions = {}
    for field in [f for f in DECISION_ORDER if f in values.nonzero_fields()]:
        candidates = [replace(convention, **{FIELD_SETTING[field]: v})  # the most likely first
                      for v in FIELD_CANDIDATES[field]]
        models = [group_with(group, values, c) for c in candidates]
        keys = [_model_key(g) for g in models]
        todo = {k: g for k, g in zip(keys, models) if k not in scores}
        if todo:
            new = score_candidates(list(todo.values()), positions, inputs.particles,
                                   inputs.images, context, noise_variance=noise)
            scores.update(zip(todo, new))
            noise = new[0].noise_variance if noise is None else noise
        decisions[field] = decide_field(field, eid, values.value(field), candidates, keys, scores,
                                        positions.size)
        convention = decisions[field].chosen  # one of the candidates: only this field changed
    return convention, [decisions[f] for f in values.nonzero_fields()]


def choose_conventions(inputs: RefinementInputs, options: RefineOptions | None = None,
                       progress=None) -> RefinementInputs:
    """The inputs with each exposure group's higher-order fields under the convention the
    particles choose (see the module docstring). ``inputs.source`` is the cryoSPARC dataset.

    Returns ``inputs`` itself when no group has a non-zero field; otherwise a copy with updated
    groups, ``report_extra["cryosparc_aberrations"]`` = {exposure group: {field: decision}}
    and, per field the data could not decide, a warning (a line through ``progress`` for the
    others).
    """
    values = group_aberrations(inputs.source, exposure_groups(inputs.source))
    todo = {eid + 1: v for eid, v in values.items() if v.nonzero_fields()}
    if not todo:
        return inputs
    options = options or RefineOptions()
    mags = [anisomag_matrix(v.anisomag, d) for v in todo.values() for d in ANISOMAG_DIRECTIONS]
    context = scoring_context(inputs.groups, inputs.half_maps, inputs.mask,
                              inputs.map_pixel_size_A, options, mag_matrices=mags)
    groups = dict(inputs.groups)
    report, warnings = {}, list(inputs.warnings)
    for og, v in sorted(todo.items()):
        convention, decisions = choose_group(inputs, groups[og], v, context)
        groups[og] = group_with(groups[og], v, convention)
        report[str(og - 1)] = {d.field: d.as_json() for d in decisions}
        for d in decisions:  # undecided ones are warnings, printed by the run
            if not d.decided_by_data:
                warnings.append(d.line())
            elif progress is not None:
                progress(d.line())
    return replace(inputs, groups=groups, warnings=warnings,
                   report_extra={**inputs.report_extra, REPORT_KEY: report})
