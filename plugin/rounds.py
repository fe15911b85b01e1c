"""Refinement rounds: rebuild the half maps with the refined Cs, refine again, measure the FSC.

The half maps a user gives were reconstructed with the nominal CTF. Predictions from them carry
that CTF, which pulls the refined Cs toward the nominal value (a Cs 0.7 mm off is refined to
within 0.02 mm, but several sigma from the truth), and their FSC is limited by it. Each further
round refines against half maps rebuilt from the particles with the previous round's optics;
the half-map FSC of those maps measures what the refined Cs did to the resolution, from the
user's own data ("FSC 0.143: 2.93 Å → 2.23 Å with the refined Cs").

The core does not reconstruct: the adapter passes a :class:`Reconstructor` (RELION:
relion_reconstruct). This module holds the loop (:func:`refine_rounds`), the update of the
inputs between rounds, the stop rule (:func:`settled`), the per-round records, the result
combined relative to the original inputs (:func:`combine`: Cs, defocus offset and the measured
phase, curves and 2D maps, against the user's nominal CTF) and the one progress line per round;
:mod:`csrefine.rounds_report` reports them (text, JSON, the rounds page of logfile.pdf).

Stop rule: after round r >= 2, stop when every refined group's change in that round is below
its jackknife sigma. Round 1 is always followed by a rebuild when more rounds are asked for: its
agreement with the nominal Cs is measured against maps that carry the nominal CTF, and the
first rebuild is the before/after measurement the user asked for.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from .ctf import cs_phase_factor, defocus_phase_factor, electron_wavelength_A
from .errors import check_abort
from .fit import PhaseModel
from .fsc import reach_text, reaches_nyquist
from .interpret import interpretation_fields
from .model import OpticsGroup, Particles, group_label
from .options import RefineOptions
from .phase_map import shifted_curves, with_isotropic_change
from .pipeline import AbortFn, ProgressFn, refine_inputs
from .results import GroupResult, Refinement
from .zernike import fold_out_k4, rescale_beam_tilt


@dataclass(frozen=True)
class HalfMaps:
    """Half maps rebuilt for a round.

    half1, half2 : real-space maps [z, y, x]; pixel_size_A : their header's pixel size (None if
    unset); names : how to name them in reports (their files where they are kept); seconds :
    wall time of the rebuild; files : {file name in the output directory: where the adapter
    wrote it} for maps kept as outputs (empty: removed after the run).
    """

    half1: np.ndarray
    half2: np.ndarray
    pixel_size_A: float | None
    names: tuple[str, str]
    seconds: float
    files: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RoundCost:
    """The stated cost of rebuilding the half maps once: peak memory (bytes, all processes
    together), wall time (seconds) and the processes run at once."""

    memory_bytes: float
    seconds: float
    processes: int
    tool: str

    def text(self, rounds: int) -> str:
        return (f"{rounds} rounds: each further round rebuilds both half maps with {self.tool} "
                f"({self.processes} process{'es' if self.processes > 1 else ''} at once, about "
                f"{self.memory_bytes / 2**20:,.0f} MiB of memory and {self.seconds:.0f} s, "
                f"estimated from the box size and particle count, one unloaded core per process) "
                f"and refines again (about as long as round 1)")


class Reconstructor(Protocol):
    """What an adapter provides to rebuild half maps (e.g. relion_reconstruct)."""

    def estimate(self, inputs) -> RoundCost:
        """The cost of one rebuild for these inputs (stated in the log before any round)."""

    def __call__(self, round_number: int, inputs, refinement: Refinement,
                 progress: ProgressFn | None, should_abort: AbortFn) -> HalfMaps:
        """Rebuild both half maps from ``inputs`` (the run's original inputs, never modified)
        with the optics of ``refinement`` (combined relative to those inputs, as the output
        particle file states them). Raise AbortRequested on abort."""


@dataclass(frozen=True)
class RoundGroup:
    """One optics group in one round.

    cs_input_mm : the round's starting (effective) Cs; cs_mm : refined (the input's where the
    group was not refined); cs_sigma_mm : jackknife sigma; defocus_offset_A : the round's offset;
    half_map_check : the verdict of the check of that round's half maps against the group's
    half sets (:mod:`csrefine.halfsets`; empty if not made); name : the group's name.
    """

    optics_group: int
    refined: bool
    cs_input_mm: float
    cs_mm: float
    cs_sigma_mm: float | None
    defocus_offset_A: float
    half_map_check: str = ""
    name: str = ""

    @property
    def label(self) -> str:
        return group_label(self.optics_group, self.name)

    @property
    def change_mm(self) -> float:
        return self.cs_mm - self.cs_input_mm

    @property
    def settled(self) -> bool:
        """Not refined (nothing can change), or changed by less than its sigma."""
        if not self.refined:
            return True
        return (self.cs_sigma_mm is not None and math.isfinite(self.cs_sigma_mm)
                and abs(self.change_mm) < self.cs_sigma_mm)


@dataclass(frozen=True)
class RoundRecord:
    """One round: per-group Cs, the FSC of the half maps it refined against, wall times (s).

    half_maps : the maps' names (round 1: the user's); fsc : per Fourier shell; resolution_A :
    where it drops below the threshold; reconstruct_s : the rebuild before this round (0 for
    round 1); refine_s : the refinement; map_pixel_size_A : the half maps' pixel size (None:
    unknown); reaches_nyquist : the FSC never drops below the threshold (resolution_A is then
    the maps' Nyquist, a bound, not a measurement).
    """

    round: int
    groups: tuple[RoundGroup, ...]
    resolution_A: float
    fsc: tuple[float, ...]
    half_maps: tuple[str, ...]
    reconstruct_s: float
    refine_s: float
    map_pixel_size_A: float | None = None

    @property
    def reaches_nyquist(self) -> bool:
        return reaches_nyquist(self.resolution_A, self.map_pixel_size_A)


@dataclass
class RoundsOutcome:
    """The loop's result: per-round records, the refinement combined relative to the original
    inputs, the last round's inputs (its rebuilt half maps), the rebuilt maps, and why it stopped."""

    records: list[RoundRecord]
    refinement: Refinement
    inputs: object
    maps: list[HalfMaps] = field(default_factory=list)
    stop_reason: str = ""


def round_record(number: int, refinement: Refinement, half_maps, reconstruct_s: float,
                 refine_s: float) -> RoundRecord:
    """The record of one round from its refinement (relative to that round's inputs)."""
    groups = tuple(RoundGroup(g.optics_group, g.refined, g.cs_nominal_mm + g.cs_zernike_mm,
                              g.cs_refined_mm, g.cs_sigma_mm, g.defocus_offset_A,
                              str(g.half_maps.get("verdict", "")), g.name)
                   for g in refinement.groups)
    return RoundRecord(number, groups, float(refinement.resolution_A),
                       tuple(float(v) for v in refinement.fsc), tuple(str(n) for n in half_maps),
                       float(reconstruct_s), float(refine_s), refinement.map_pixel_size_A)


def settled(record: RoundRecord) -> bool:
    """The stop rule: every group's change in this round is below its sigma."""
    return all(g.settled for g in record.groups)


# ------------------------------------------------------------------------------------------
# The inputs of the next round


def updated_group(group: OpticsGroup, result: GroupResult) -> OpticsGroup:
    """``group`` with its refined Cs, as the output particle file states it: the isotropic k^4
    part of the even Zernike terms folded into Cs, the beam tilt rescaled so that the coma is
    unchanged (RELION derives it from the group's Cs)."""
    if not result.refined:
        return group
    new = replace(group, cs_mm=float(result.cs_refined_mm))
    if result.cs_zernike_mm:
        new = replace(new, even_zernike=fold_out_k4(group.even_zernike))
    if group.has_beam_tilt:
        tx, ty = rescale_beam_tilt([group.beam_tilt_x_mrad, group.beam_tilt_y_mrad],
                                   group.cs_mm, result.cs_refined_mm)
        new = replace(new, beam_tilt_x_mrad=float(tx), beam_tilt_y_mrad=float(ty))
    return new


def updated_groups(groups: dict[int, OpticsGroup], refinement: Refinement) -> dict[int, OpticsGroup]:
    """Every optics group after ``refinement`` (refined groups changed, the others as given)."""
    by_id = {g.optics_group: g for g in refinement.groups}
    return {gid: updated_group(group, by_id[gid]) if gid in by_id else group
            for gid, group in groups.items()}


def updated_particles(particles: Particles, refinement: Refinement) -> Particles:
    """A copy of ``particles`` with defocus U/V shifted by their refined group's offset."""
    du = np.array(particles.defocus_u_A, dtype=np.float64)
    dv = np.array(particles.defocus_v_A, dtype=np.float64)
    for g in refinement.groups:
        if g.defocus_offset_A:  # 0 for groups not refined
            sel = particles.optics_group == g.optics_group
            du[sel] += g.defocus_offset_A
            dv[sel] += g.defocus_offset_A
    return replace(particles, defocus_u_A=du, defocus_v_A=dv)


# ------------------------------------------------------------------------------------------
# The result relative to the original inputs


def _combined_group(original: OpticsGroup, results: list[GroupResult]) -> GroupResult:
    """One group's rounds as one result relative to the original optics: the last refined
    round's Cs and sigma, the sum of the refined rounds' defocus offsets, the change, its z, the
    pixel-size alternative and the resolution where it matters, against the original nominal;
    the measured phase (curves, 2D maps, anisotropy) against the original nominal CTF too."""
    refined = [r for r in results if r.refined]
    if not refined:
        return results[0]
    last = refined[-1]
    offset = float(sum(r.defocus_offset_A for r in refined))
    lam = electron_wavelength_A(original.voltage_kv)
    model = PhaseModel(defocus_phase_factor(lam), cs_phase_factor(lam))
    # What the earlier rounds changed: the last round's input optics against the original ones
    # (defocus shifted by their offsets, the effective Cs moved; the rest of the phase is kept).
    cs_input = original.cs_mm + results[0].cs_zernike_mm
    earlier_offset = offset - last.defocus_offset_A
    earlier_cs = last.cs_nominal_mm + last.cs_zernike_mm - cs_input
    curves = shifted_curves(last.curves, lambda k2: model.delta(earlier_offset, earlier_cs, k2),
                            original.mag_matrix)
    edge = model.delta(offset, last.cs_refined_mm - cs_input, (1.0 / last.band_A[1]) ** 2)
    return replace(last, refined=True, cs_nominal_mm=original.cs_mm,
                   cs_zernike_mm=results[0].cs_zernike_mm, defocus_offset_A=offset,
                   curves=curves,
                   **interpretation_fields(model, original.pixel_size_A, original.cs_mm,
                                           last.cs_refined_mm, last.cs_sigma_mm, offset),
                   anisotropy=with_isotropic_change(last.anisotropy, abs(np.rad2deg(edge))))


def combine(original_groups: dict[int, OpticsGroup], refinements: list[Refinement]) -> Refinement:
    """The rounds as one :class:`Refinement` relative to the original inputs (what the output
    particle file and csrefine.json's ``groups`` state); FSC, band and backend of the last
    round, the warnings of all rounds (once each)."""
    last = refinements[-1]
    groups = []
    for g in refinements[0].groups:
        gid = g.optics_group
        results = [r.group(gid) for r in refinements if any(x.optics_group == gid for x in r.groups)]
        groups.append(_combined_group(original_groups[gid], results))
    warnings = list(dict.fromkeys(w for r in refinements for w in r.warnings))
    timings = dict(refinements[0].timings_s)
    return replace(last, groups=groups, warnings=warnings, timings_s=timings)


# ------------------------------------------------------------------------------------------
# The loop


def refine_rounds(inputs, options: RefineOptions, first: Refinement, reconstruct: Reconstructor,
                  progress: ProgressFn, should_abort: AbortFn) -> RoundsOutcome:
    """Rounds 2..options.rounds after ``first`` (round 1, refined against the given maps).

    Before round r the half maps are rebuilt by ``reconstruct`` with the optics the rounds so
    far give (relative to the original ``inputs``, which are never modified); round r refines
    the particles, updated likewise (Cs, folded Zernike terms, rescaled beam tilt, shifted
    defocus), against them. Stops after round r >= 2 when :func:`settled`.
    """
    names = inputs.sources.get("half_maps") or ("half map 1", "half map 2")
    records = [round_record(1, first, names, 0.0, first.timings_s.get("refine", 0.0))]
    refinements, maps, current = [first], [], inputs
    stop = f"all {options.rounds} rounds done"
    progress(round_line(records[-1]))
    for number in range(2, options.rounds + 1):
        check_abort(should_abort)
        progress(f"round {number} of {options.rounds}: rebuilding the half maps with the "
                 f"Cs of round {number - 1}")
        rebuilt = reconstruct(number, inputs, combine(inputs.groups, refinements), progress,
                              should_abort)
        maps.append(rebuilt)
        check_abort(should_abort)
        current = replace(current, groups=updated_groups(current.groups, refinements[-1]),
                          particles=updated_particles(current.particles, refinements[-1]),
                          half_maps=(rebuilt.half1, rebuilt.half2),
                          map_pixel_size_A=rebuilt.pixel_size_A or current.map_pixel_size_A,
                          sources={**current.sources, "half_maps": list(rebuilt.names)})
        t0 = time.monotonic()
        refinement = refine_inputs(current, options, progress, should_abort)
        refinements.append(refinement)
        records.append(round_record(number, refinement, rebuilt.names, rebuilt.seconds,
                                    time.monotonic() - t0))
        progress(round_line(records[-1]))
        if settled(records[-1]):
            if number < options.rounds:
                stop = (f"stopped after round {number} of {options.rounds}: every group's "
                        f"change was below its sigma")
            break
    combined = combine(inputs.groups, refinements)
    for r in records[1:]:
        combined.timings_s[f"round{r.round}_reconstruct"] = r.reconstruct_s
        combined.timings_s[f"round{r.round}_refine"] = r.refine_s
    return RoundsOutcome(records, combined, current, maps, stop)


def cs_text(g: RoundGroup) -> str:
    """A round's Cs of one group: "2.997 ± 0.003", or "2.700 (not refined)"."""
    if not g.refined:
        return f"{g.cs_mm:.3f} (not refined)"
    sigma = f"{g.cs_sigma_mm:.3f}" if g.cs_sigma_mm is not None else "-"
    return f"{g.cs_mm:.3f} ± {sigma}"


def round_line(record: RoundRecord) -> str:
    """One progress line per round: Cs per group (and its change in this round) and the FSC
    resolution of the round's half maps."""
    groups = "; ".join(f"{g.label} Cs {cs_text(g)} mm (change in this round {g.change_mm:+.3f})"
                       for g in record.groups)
    fsc = reach_text(record.resolution_A, record.map_pixel_size_A)
    return f"round {record.round}: {groups}; half-map FSC {fsc}"
