"""The words of a report: one headline per group and the status a user acts on (page 1 of
logfile.pdf), the full interpretation (run.out, the details page) and the plain-text table.

A change of Cs is *significant* when it exceeds SIGNIFICANT_Z standard errors (the jackknife's);
the headline, the status and the interpretation all follow that one rule, and a pixel-size
calibration against an atomic model (its verdict per group, decided by the same rule) takes
precedence over the pixel-size alternative a CTF fit alone can only offer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .fsc import reaches_nyquist
from .model import group_label, nyquist_A
from .results import GroupResult, Refinement

#: A change of Cs is called significant when it exceeds this many standard errors.
SIGNIFICANT_Z = 3.0
#: Pixel-size errors beyond this (relative) are not taken as an explanation of a Cs change: a
#: microscope's magnification calibration is rarely off by more than a few percent.
PLAUSIBLE_PIXEL_ERROR = 0.05
#: Below this isotropic change (degrees at the band's edge) the anisotropy ratio means little.
SMALL_PHASE_DEG = 5.0
#: An anisotropic part above this fraction of the isotropic change is pointed out.
ANISOTROPIC_FRACTION = 0.2
#: Reasons for not refining, shortened for the status column (the full reason is in the text).
SHORT_REASONS = (("do not match the particles' half sets", "half maps of another split"),)
#: Longest status reason shown in a table cell (characters).
SHORT_REASON_CHARS = 34


@dataclass(frozen=True)
class PixelVerdict:
    """What the pixel-size calibration against an atomic model says about one group.

    kind : "pixel size", "Cs", "both", "no change", "undetermined" or "not refined"
    (:mod:`csrefine.calibrate`); pixel_size_A / pixel_size_sigma_A : the calibrated pixel size
    at this group's scale; pixel_size_nominal_A : the group's; cs_mm / cs_sigma_mm : Cs at the
    calibrated pixel size (sigma None where the group was not refined); text : what the
    calibration says about the pixel size (:func:`csrefine.calibrate.verdict.group_verdict`).
    """

    kind: str
    pixel_size_A: float
    pixel_size_sigma_A: float
    pixel_size_nominal_A: float
    cs_mm: float
    cs_sigma_mm: float | None
    text: str = ""

    @property
    def pixel_text(self) -> str:
        """"1.0204 ± 0.0002 Å (+2.04%)": the calibrated pixel size and its departure."""
        rel = 100 * (self.pixel_size_A / self.pixel_size_nominal_A - 1)
        return f"{self.pixel_size_A:.4f} ± {self.pixel_size_sigma_A:.4f} Å ({rel:+.2f}%)"


def label(g) -> str:
    """"Optics group 1" (RELION) or "Exposure group 0" (cryoSPARC), for a sentence's start."""
    text = group_label(g.optics_group, g.name)
    return text[0].upper() + text[1:]


def group_kind(groups) -> str:
    """"optics group" (RELION) or "exposure group" (cryoSPARC), as the groups are labelled;
    "group" without groups."""
    return group_label(groups[0].optics_group, groups[0].name).rsplit(" ", 1)[0] if groups else "group"


def has_own_name(g) -> bool:
    """Whether the group's name says more than its number (RELION's default "opticsGroupN" and
    cryoSPARC's "exposure group N" do not)."""
    return g.name not in (f"opticsGroup{g.optics_group}", group_label(g.optics_group, g.name))


def verdict_of(calibration, g) -> PixelVerdict | None:
    """The group's verdict in ``calibration`` (:class:`csrefine.calibration_report.CalibrationOutcome`;
    None without a calibration)."""
    return calibration.verdicts.get(g.optics_group) if calibration is not None else None


def _z(g: GroupResult) -> float | None:
    """|change of Cs| in standard errors; None where there is no standard error."""
    z = g.cs_change_z
    return abs(z) if z is not None and math.isfinite(z) else None


def significant(g: GroupResult) -> bool:
    z = _z(g)
    return g.refined and z is not None and z >= SIGNIFICANT_Z


def resolution_text(resolution_A: float, pixel_size_A: float | None) -> str:
    """An FSC resolution: "2.62 Å", or "better than 2.40 Å (Nyquist)" where the curve never
    drops below the threshold (the resolution is then Nyquist, a bound)."""
    if reaches_nyquist(resolution_A, pixel_size_A):
        return f"better than {resolution_A:.2f} Å (Nyquist)"
    return f"{resolution_A:.2f} Å"


def short_reason(reason: str) -> str:
    """Why a group was not refined, in a few words (the reason's first clause)."""
    for key, short in SHORT_REASONS:
        if key in reason:
            return short
    head = re.split(r"[:;(]", reason, maxsplit=1)[0].strip()
    if len(head) <= SHORT_REASON_CHARS:
        return head
    return head[:SHORT_REASON_CHARS - 1].rsplit(" ", 1)[0] + "…"


# ------------------------------------------------------------------------------------------
# Page 1: a headline and a status per group


def status(g: GroupResult, verdict: PixelVerdict | None = None) -> str:
    """What the user should do with this group's Cs, in a few words."""
    if not g.refined:
        return f"not refined: {short_reason(g.reason)}"
    if verdict is not None:
        return {"Cs": "use refined Cs", "no change": "keep nominal Cs",
                "pixel size": "keep nominal Cs, use calibrated pixel",
                "both": "use calibrated pixel and its Cs",
                "undetermined": "use refined Cs; pixel size open"}.get(verdict.kind,
                                                                      "keep nominal Cs")
    return "use refined Cs" if significant(g) else "keep nominal Cs"


def _change_mm(change: float) -> str:
    return f"{abs(change):.2f}" if abs(change) >= 0.1 else f"{abs(change):.3f}"


def impact_text(g: GroupResult) -> str:
    """Where the change matters: the resolution at which the CTFs differ by 45°."""
    if g.resolution_impact_A:
        return f"matters beyond {g.resolution_impact_A:.1f} Å"
    return (f"no practical effect up to Nyquist ({nyquist_A(g.pixel_size_A):.2f} Å): the CTFs "
            f"differ by less than 45° there")


def headline(g: GroupResult, verdict: PixelVerdict | None = None,
             model_given: bool = False) -> list[str]:
    """One to three short lines for page 1: the answer first, then what qualifies it."""
    nominal = f"the nominal {g.cs_nominal_mm:.3f} mm"
    if not g.refined:
        return [f"{label(g)}: not refined ({short_reason(g.reason)}); Cs stays at {nominal}."]
    cs = f"Cs {g.cs_refined_mm:.3f} ± {g.cs_sigma_mm:.3f} mm"
    change = g.cs_refined_mm - g.cs_nominal_mm
    if significant(g):
        lines = [f"{label(g)}: {cs}, {_change_mm(change)} mm {'above' if change > 0 else 'below'} "
                 f"{nominal} (significant: {abs(g.cs_change_z):.0f} standard errors); "
                 f"{impact_text(g)}."]
    else:
        z = _z(g)
        apart = f", {z:.1f} standard errors from it" if z is not None else ""
        lines = [f"{label(g)}: consistent with {nominal} ({cs}{apart})."]
    if verdict is not None:
        lines.append(verdict_sentence(g, verdict))
    elif significant(g) and not model_given:
        lines.extend(_pixel_alternative(g, short=True))
    lines.extend(_anisotropy_alarm(g))
    return lines


def verdict_sentence(g: GroupResult, v: PixelVerdict) -> str:
    """The calibration's verdict for one group in plain words."""
    cs = f"{v.cs_mm:.3f}" + (f" ± {v.cs_sigma_mm:.3f} mm" if v.cs_sigma_mm is not None else " mm")
    at = f"at that pixel size Cs is {cs}"
    if v.kind == "Cs":
        return (f"The atomic model confirms the pixel size, {v.pixel_text}: the change is in "
                f"Cs ({cs} at that pixel size).")
    if v.kind == "no change":
        return (f"The atomic model confirms the pixel size, {v.pixel_text}; {at}, consistent "
                f"with the nominal.")
    if v.kind == "undetermined":
        departure_mm = float(g.cs_refined_mm) - float(g.cs_nominal_mm)
        return (f"The atomic model cannot tell pixel size from Cs here: the refined Cs "
                f"{g.cs_refined_mm:.3f} ± {g.cs_sigma_mm:.3f} mm departs from the nominal "
                f"{g.cs_nominal_mm:.2f} mm by {departure_mm:+.3f} mm, but "
                f"{v.text}, so the calibration cannot tell how much of the departure is the "
                f"pixel size.")
    if v.kind == "pixel size":
        return (f"The atomic model puts the pixel size at {v.pixel_text}; {at}, consistent "
                f"with the nominal: the change is the pixel size, not Cs.")
    if v.kind == "both":
        return (f"The atomic model puts the pixel size at {v.pixel_text}, which explains "
                f"{g.cs_refined_mm - v.cs_mm:+.3f} mm of the change; {at}, still "
                f"{v.cs_mm - g.cs_nominal_mm:+.3f} mm from the nominal.")
    return f"The atomic model puts the pixel size at {v.pixel_text}."


def _anisotropy_deg(g: GroupResult) -> tuple[float, float, float | None] | None:
    """(anisotropic part, isotropic change) at the band's edge, degrees, and the part over the
    change (None: the change is too small to judge); None where not measured."""
    a = g.anisotropy
    if not a or not math.isfinite(a.get("anisotropic_deg_at_band_edge", float("nan"))):
        return None
    aniso, iso = a["anisotropic_deg_at_band_edge"], a["isotropic_change_deg_at_band_edge"]
    return aniso, iso, None if iso < SMALL_PHASE_DEG else aniso / iso


def _anisotropy_alarm(g: GroupResult) -> list[str]:
    deg = _anisotropy_deg(g)
    if deg is None or deg[2] is None or deg[2] < ANISOTROPIC_FRACTION:
        return []
    return [f"The measured change is partly anisotropic ({100 * deg[2]:.0f}% at the band's "
            f"edge): see the 2D phase maps on the group's page."]


# ------------------------------------------------------------------------------------------
# The full interpretation (run.out, the details page)


def interpretation(g: GroupResult, verdict: PixelVerdict | None = None,
                   model_given: bool = False) -> list[str]:
    """Plain sentences: Cs ± sigma, significance, reproducibility, the pixel-size alternative
    (or the calibration's verdict), how isotropic the change is and where it matters."""
    name = f"{g.name}, " if has_own_name(g) else ""
    head = f"{label(g)} ({name}{g.n_particles} particles):"
    if not g.refined:
        return [head, f"  Not refined: {g.reason}; Cs stays at the nominal {g.cs_nominal_mm:.3f} mm."]
    held = (f", of which {g.cs_zernike_mm:.3f} mm were held by Z4⁰ (rlnEvenZernike) in the input"
            if g.cs_zernike_mm else "")
    lines = [head, f"  Cs = {g.cs_refined_mm:.3f} ± {g.cs_sigma_mm:.3f} mm{held} (jackknife; "
                   f"nominal {g.cs_nominal_mm:.3f} mm, change "
                   f"{g.cs_refined_mm - g.cs_nominal_mm:+.3f} mm), defocus offset "
                   f"{g.defocus_offset_A:+.1f} Å.",
             _significance(g)]
    if g.cs_subsets_mm:
        spread = float(np.std(g.cs_subsets_mm, ddof=1)) if len(g.cs_subsets_mm) > 1 else float("nan")
        lines.append(f"  Independent random subsets: {', '.join(f'{c:.3f}' for c in g.cs_subsets_mm)} mm "
                     f"(standard deviation {spread:.3f} mm).")
    if verdict is not None:
        lines.append("  " + verdict_sentence(g, verdict))
    else:
        lines.extend("  " + line for line in _pixel_alternative(g, model_given=model_given))
    lines.extend(_anisotropy(g))
    if g.resolution_impact_A:
        lines.append(f"  The refined CTF departs from the nominal one by 45° at "
                     f"{g.resolution_impact_A:.2f} Å: it matters for data beyond that resolution.")
    else:
        lines.append(f"  The refined and nominal CTFs differ by less than 45° up to Nyquist "
                     f"({nyquist_A(g.pixel_size_A):.2f} Å): the change has no practical effect at "
                     f"this pixel size.")
    return lines


def _significance(g: GroupResult) -> str:
    """Whether the data show a change of Cs at all, whatever the point estimate."""
    z = _z(g)
    if z is None:
        return "  The significance of the change cannot be judged (no standard error)."
    if z < SIGNIFICANT_Z:
        return (f"  No significant change: the change is {z:.1f} standard errors (below "
                f"{SIGNIFICANT_Z:g}); the data are consistent with the nominal Cs.")
    return f"  The change is significant: {z:.1f} standard errors."


def _anisotropy(g: GroupResult) -> list[str]:
    """How isotropic the measured phase change is (the 2D phase maps quantified)."""
    deg = _anisotropy_deg(g)
    if deg is None:
        return []
    aniso, iso, ratio = deg
    if ratio is None:
        return [f"  The measured phase change is small at the band's edge ({iso:.1f}°); its "
                f"anisotropic part is {aniso:.1f}°."]
    kind = ("isotropic, as a Cs or pixel-size change is" if ratio < ANISOTROPIC_FRACTION else
            "partly anisotropic: look at the 2D phase maps (magnification anisotropy, "
            "astigmatism or tetrafoil also change the k⁴ term)")
    return [f"  At the band's edge the isotropic change is {iso:.1f}° and the anisotropic part "
            f"of the measured phase {aniso:.1f}° ({100 * ratio:.0f}%): the change is {kind}."]


def _pixel_alternative(g: GroupResult, short: bool = False, model_given: bool = False) -> list[str]:
    """The pixel size that would explain the refined Cs instead, where that is plausible."""
    p_alt = g.pixel_size_if_cs_nominal_A
    if p_alt is None:
        return []
    if not math.isfinite(p_alt):
        return [] if short else [
            "No pixel size explains this Cs with the nominal Cs (the refined Cs is not "
            "positive): it is not a pixel-size effect."]
    rel = p_alt / g.pixel_size_A - 1
    text = f"a pixel size of {p_alt:.4f} Å instead of {g.pixel_size_A:.4f} Å ({100 * rel:+.2f}%)"
    if abs(rel) > PLAUSIBLE_PIXEL_ERROR:
        return [] if short else [
            f"With Cs at its nominal value, only {text} would explain the same CTF: a pixel-size "
            f"error that large is implausible, so this is not a pixel-size effect (Cs is a small "
            f"fraction of its change, as on Cs-corrected microscopes, or the k⁴ term absorbs "
            f"another phase error)."]
    if short:
        return [f"Or {text} with the nominal Cs: an atomic model (option model) tells which."]
    ruler = ("; the atomic model could not tell which (see the calibration)" if model_given else
             "; only an absolute ruler (an atomic model) tells which")
    return [f"Alternatively, with Cs at its nominal value, {text} explains the same CTF{ruler}."]


def interpretation_text(refinement: Refinement, calibration=None) -> str:
    """Every group's interpretation; ``calibration``: the run's pixel-size calibration
    (:class:`csrefine.calibration_report.CalibrationOutcome`, None without a model)."""
    return "\n".join(line for g in refinement.groups
                     for line in interpretation(g, verdict_of(calibration, g), calibration is not None))


# ------------------------------------------------------------------------------------------
# The table


def table_rows(refinement: Refinement, calibration=None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-group table (header cells of up to two lines, split by
    newlines): the group, its name where it has its own, particles, nominal and refined Cs, the
    change in mm and in standard errors, the defocus offset, the resolution beyond which the
    change matters, and the status."""
    groups = refinement.groups
    named = any(has_own_name(g) for g in groups)
    header = ([group_kind(groups).replace(" ", "\n")] + (["name"] if named else [])
              + ["particles", "nominal\nCs (mm)", "refined\nCs (mm)", "change\n(mm)",
                 "standard\nerrors", "defocus\nshift (Å)", "matters\nbeyond", "status"])
    rows = []
    for g in groups:
        cells = [group_label(g.optics_group, g.name).rsplit(" ", 1)[1]] + (
            [g.name] if named else []) + [str(g.n_particles), f"{g.cs_nominal_mm:.3f}"]
        if g.refined:
            z = _z(g)
            cells += [f"{g.cs_refined_mm:.3f} ± {g.cs_sigma_mm:.3f}",
                      f"{g.cs_refined_mm - g.cs_nominal_mm:+.3f}",
                      f"{z:.1f}" if z is not None else "–",
                      f"{g.defocus_offset_A:+.1f}",
                      f"{g.resolution_impact_A:.2f} Å" if g.resolution_impact_A else "not up to Nyquist"]
        else:
            cells += ["–"] * 5
        rows.append(cells + [status(g, verdict_of(calibration, g))])
    return header, rows


def summary_table(refinement: Refinement, calibration=None) -> str:
    """The per-group table as plain text (run.out, the cryoSPARC event log): columns as wide as
    their widest cell, numbers right-aligned."""
    header, rows = table_rows(refinement, calibration)
    return text_table(header, rows, left={0, len(header) - 1} | ({1} if header[1] == "name" else set()))


def text_table(header: list[str], rows: list[list[str]], left=frozenset()) -> str:
    """A plain-text table: header cells of several lines (newlines) bottom-aligned, columns as
    wide as their widest cell, the columns in ``left`` left-aligned, the others right-aligned."""
    heads = [h.split("\n") for h in header]
    depth = max(len(h) for h in heads)
    heads = [[""] * (depth - len(h)) + h for h in heads]
    widths = [max(len(x) for x in [*heads[i], *(r[i] for r in rows)]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    head = [line([h[j] for h in heads]) for j in range(depth)]
    rule = "-" * max(len(x) for x in head + [line(r) for r in rows])
    return "\n".join([*head, rule, *(line(r) for r in rows)])
