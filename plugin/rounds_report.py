"""The report of refinement rounds (:mod:`csrefine.rounds`): the one line of what the refined
Cs did to the resolution, the per-round table, csrefine.json's entries and the rounds page of
logfile.pdf."""

from __future__ import annotations

import numpy as np

from .fsc import FSC_THRESHOLD
from .halfsets import INDEPENDENT
from .report import CURVE_SIGNIFICANT_DIGITS, _clean
from .report_layout import caption, fsc_axes, new_page, plot_fsc
from .report_text import group_kind, resolution_text, text_table
from .rounds import RoundRecord, RoundsOutcome, cs_text


def fsc_text(record: RoundRecord) -> str:
    """A round's FSC resolution: "2.62 Å" or "better than 2.40 Å (Nyquist)"."""
    return resolution_text(record.resolution_A, record.map_pixel_size_A)


def resolution_change_line(records: list[RoundRecord]) -> str:
    """What the refined Cs did to the resolution, in one line (empty for a single round)."""
    if len(records) < 2:
        return ""
    first, last = records[0], records[-1]
    return (f"FSC {FSC_THRESHOLD:g}: {fsc_text(first)} → {fsc_text(last)} with the refined Cs "
            f"(round 1: the given half maps; round {last.round}: rebuilt with the Cs of round "
            f"{last.round - 1})")


def given_maps_note(records: list[RoundRecord]) -> str:
    """Why round 1's FSC is not comparable where the given half maps contain none of these
    particles' noise (every group's half-map check says "independent", e.g. simulated maps):
    the rebuilt maps' FSC then differs at every resolution. Empty otherwise."""
    checks = [g.half_map_check for g in records[0].groups if g.half_map_check]
    if len(records) < 2 or not checks or any(c != INDEPENDENT for c in checks):
        return ""
    return ("The given half maps contain none of these particles' noise (the half-map check of "
            "round 1): they were not reconstructed from these particles (e.g. simulated maps), "
            "so round 1's FSC is theirs, not what these particles give. The rebuilt maps are "
            "reconstructions from these particles: their FSC differs from round 1's for that reason "
            "too, also at low resolution, where Cs does not matter.")


def rounds_table(records: list[RoundRecord]) -> str:
    """One row per round and optics group: Cs ± sigma, the change in that round and from the
    nominal Cs, the FSC resolution and the wall times."""
    nominal = {g.optics_group: g.cs_input_mm for g in records[0].groups}
    header = ["round", group_kind(records[0].groups).replace(" ", "\n"), "Cs (mm)", "change in\nround (mm)",
              "change from\nnominal (mm)", f"FSC {FSC_THRESHOLD:g}", "rebuild\n(s)", "refine\n(s)"]
    rows = [[str(r.round), g.label.rsplit(" ", 1)[1], cs_text(g), f"{g.change_mm:+.3f}",
             f"{g.cs_mm - nominal[g.optics_group]:+.3f}", fsc_text(r), f"{r.reconstruct_s:.1f}",
             f"{r.refine_s:.1f}"] for r in records for g in r.groups]
    return text_table(header, rows)


def rounds_json(outcome: RoundsOutcome) -> dict:
    """csrefine.json's entries: ``rounds`` (one dict per round), ``rounds_stop`` (why the
    loop ended) and ``resolution_change`` (the one line)."""
    return {"rounds": [_round_json(r) for r in outcome.records], "rounds_stop": outcome.stop_reason,
            "resolution_change": resolution_change_line(outcome.records)}


def _round_json(r: RoundRecord) -> dict:
    """One round's entry of csrefine.json's ``rounds`` (the FSC rounded as the curves are)."""
    return {"round": r.round, "resolution_fsc_A": r.resolution_A,
            "half_maps": list(r.half_maps), "reconstruct_s": r.reconstruct_s,
            "fsc_reaches_nyquist": r.reaches_nyquist,
            "refine_s": r.refine_s, "fsc": _clean(r.fsc, CURVE_SIGNIFICANT_DIGITS),
            "groups": [{"optics_group": int(g.optics_group), "refined": bool(g.refined),
                        "cs_input_mm": g.cs_input_mm, "cs_mm": g.cs_mm,
                        "cs_sigma_mm": g.cs_sigma_mm, "cs_change_mm": g.change_mm,
                        "defocus_offset_A": g.defocus_offset_A, "settled": bool(g.settled),
                        "half_map_check": g.half_map_check}
                       for g in r.groups]}


def rounds_summary_lines(outcome: RoundsOutcome, note: bool = False) -> list[str]:
    """The one line, the note on the given maps (with ``note``) and why the loop stopped (page 1
    of logfile.pdf carries them without the note, the rounds page with it)."""
    lines = (resolution_change_line(outcome.records),
             given_maps_note(outcome.records) if note else "", outcome.stop_reason)
    return [line for line in lines if line]


def rounds_text_lines(outcome: RoundsOutcome) -> list[str]:
    """The lines run.out ends with: the rounds page's lines and the table."""
    return [*rounds_summary_lines(outcome, note=True), rounds_table(outcome.records)]


def rounds_figure(outcome: RoundsOutcome, pixel_size_A: float):
    """(title, figure): the half-map FSC of the first and the last round on one plot, the Cs
    per round beside it, and the one line, the note on the given maps and why the loop stopped
    beneath."""
    records = outcome.records
    first, last = records[0], records[-1]
    fig = new_page()
    fig.suptitle(f"Rounds: {resolution_change_line(records).split(' (round 1')[0]}", fontsize=13)
    ax = fig.add_axes([0.07, 0.36, 0.56, 0.53])
    # round 1 wide underneath, the last round thin on top: both stay visible where they agree
    for record, colour, width, alpha, name in (
            (first, "C0", 3.0, 0.5, "round 1: the given half maps"),
            (last, "C3", 1.2, 1.0, f"round {last.round}: rebuilt with the Cs of round {last.round - 1}")):
        k_max = plot_fsc(ax, record.fsc, pixel_size_A, color=colour, lw=width, alpha=alpha,
                         label=f"{name} ({fsc_text(record)})")
        if not record.reaches_nyquist:
            ax.axvline(1 / record.resolution_A, color=colour, ls="--", lw=0.8)
    fsc_axes(ax, k_max)
    ax.set_ylabel("half-map FSC (masked)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8.5, loc="lower left")
    _cs_per_round(fig.add_axes([0.72, 0.36, 0.25, 0.53]), records)
    caption(fig, 0.07, 0.25, rounds_summary_lines(outcome, note=True), 0.9)
    return "Rounds: half-map FSC before and after", fig


def _cs_per_round(ax, records: list[RoundRecord]) -> None:
    """Cs ± sigma per round and group, the nominal Cs dotted."""
    rounds = [r.round for r in records]
    for i, g0 in enumerate(records[0].groups):
        gs = [next(g for g in r.groups if g.optics_group == g0.optics_group) for r in records]
        ax.errorbar(np.array(rounds) + 0.04 * i, [g.cs_mm for g in gs],
                    yerr=[g.cs_sigma_mm or 0.0 for g in gs], fmt="o-", ms=4, capsize=3,
                    color=f"C{i % 10}", label=g0.label)
        ax.axhline(g0.cs_input_mm, color=f"C{i % 10}", ls=":", lw=0.8)
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("Cs (mm); dotted: nominal")
    ax.set_title("Cs per round", fontsize=10)
    ax.legend(fontsize=8)
