"""What ``csrefine history show`` tells: per instrument and voltage, the data sets, the weighted
mean Cs, the scatter against the sigmas, each data set's deviation (outliers flagged and, where a
pixel-size error explains one, said so), the same per magnification, and Cs at calibrated pixel
sizes. A *data set* is one refined optics group of one recorded run.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..report_text import PLAUSIBLE_PIXEL_ERROR
from .db import GroupRecord
from .stats import (
    MIN_DATASETS_FOR_OUTLIERS,
    OUTLIER_SIGMA,
    WeightedMean,
    cs_sigma_at_calibrated_pixel_mm,
    deviations_sigma,
    outlier_flags,
    pixel_change_explaining,
    weighted_mean,
)


@dataclass(frozen=True)
class MeanSummary:
    """A :class:`~.stats.WeightedMean` as reported (mm; chi2_per_dof None below two values)."""

    n: int
    mean_mm: float | None
    se_mm: float | None
    se_stat_mm: float | None
    chi2_per_dof: float | None
    systematic_mm: float

    @classmethod
    def of(cls, wm: WeightedMean) -> MeanSummary:
        def finite(v):
            return float(v) if v is not None and math.isfinite(v) else None
        return cls(wm.n, finite(wm.mean), finite(wm.se), finite(wm.se_stat),
                   finite(wm.chi2_per_dof), float(wm.tau))


@dataclass(frozen=True)
class DataSet:
    """One data set in a panel: its Cs, deviation from the others' mean and explanation."""

    label: str
    date: str
    magnification: str
    n_particles: int | None
    refined: bool
    cs_mm: float | None
    cs_sigma_mm: float | None
    deviation_sigma: float | None
    outlier: bool
    pixel_size_A: float | None
    pixel_change_explaining: float | None
    cs_at_calibrated_pixel_mm: float | None
    cs_at_calibrated_pixel_sigma_mm: float | None
    pixel_size_calibrated_A: float | None
    verdict: str | None
    source: str | None


@dataclass(frozen=True)
class MagnificationSummary:
    """The data sets of one magnification label within a panel."""

    magnification: str
    stats: MeanSummary
    deviation_from_other_magnifications_sigma: float | None


@dataclass
class Panel:
    """One instrument at one voltage."""

    instrument: str
    voltage_kv: float | None
    cs_nominal_mm: float | None
    datasets: list[DataSet]
    all_data: MeanSummary
    without_outliers: MeanSummary
    magnifications: list[MagnificationSummary]
    calibrated: MeanSummary | None
    conclusion: str
    outlier_rule: str = field(default=f"|deviation from the other data sets' weighted mean| > "
                                      f"{OUTLIER_SIGMA:g} sigma (own sigma, the others' standard "
                                      f"error and their systematic scatter combined)")


def dataset_label(record: GroupRecord, groups_in_run: int) -> str:
    """A short name: the last two parts of the recorded directory (e.g. External/job012; else the
    hash), plus the optics group when the run had several."""
    base = ("/".join(Path(record.source).parts[-2:]) if record.source
            else record.content_hash[:8])
    return f"{base}:g{record.optics_group}" if groups_in_run > 1 else base


def _has_cs(refined: bool, cs_mm: float | None, cs_sigma_mm: float | None) -> bool:
    """A refined Cs with a finite, positive sigma, mm: what the weighted means take."""
    return (bool(refined) and cs_mm is not None and cs_sigma_mm is not None
            and math.isfinite(cs_sigma_mm) and cs_sigma_mm > 0)


def _at_calibrated_pixel(r: GroupRecord) -> tuple[float | None, float | None]:
    """The group's calibrated pixel size, Å, and the sigma of its Cs there, mm ((None, None)
    without a calibration): its nominal pixel size times the map's calibrated/nominal ratio
    (runs recorded without the map's pixel size: the group's taken as the map's)."""
    if not (_has_cs(r.refined, r.cs_refined_mm, r.cs_sigma_mm) and r.pixel_size_A
            and r.pixel_size_calibrated_A and r.cs_at_calibrated_pixel_mm is not None):
        return None, None
    ratio = r.pixel_size_calibrated_A / (r.map_pixel_size_A or r.pixel_size_A)
    sigma = cs_sigma_at_calibrated_pixel_mm(r.cs_sigma_mm, ratio, r.cs_at_calibrated_pixel_mm,
                                            (r.pixel_size_sigma_A or 0.0) / r.pixel_size_calibrated_A)
    return r.pixel_size_A * ratio, sigma


def build_panel(instrument: str, voltage_kv: float | None, records: list[GroupRecord]) -> Panel:
    """The summary of one instrument and voltage from its recorded groups."""
    per_run = Counter(r.run_id for r in records)
    usable = [r for r in records if _has_cs(r.refined, r.cs_refined_mm, r.cs_sigma_mm)]
    cs = np.array([r.cs_refined_mm for r in usable])
    sigma = np.array([r.cs_sigma_mm for r in usable])
    dev = deviations_sigma(cs, sigma)
    flags = outlier_flags(dev)
    kept = weighted_mean(cs[~flags], sigma[~flags])
    reference = kept.mean if kept.n else float("nan")
    datasets = []
    index = {id(r): i for i, r in enumerate(usable)}
    for r in records:
        i = index.get(id(r))
        pixel_calibrated_A, cs_calibrated_sigma_mm = _at_calibrated_pixel(r)
        change = (pixel_change_explaining(r.cs_refined_mm, reference)
                  if i is not None and math.isfinite(reference) else None)
        datasets.append(DataSet(
            label=dataset_label(r, per_run[r.run_id]), date=r.run_date.date().isoformat(),
            magnification=r.magnification_label, n_particles=r.n_particles, refined=r.refined,
            cs_mm=r.cs_refined_mm, cs_sigma_mm=r.cs_sigma_mm,
            deviation_sigma=float(dev[i]) if i is not None and math.isfinite(dev[i]) else None,
            outlier=bool(flags[i]) if i is not None else False, pixel_size_A=r.pixel_size_A,
            pixel_change_explaining=change, cs_at_calibrated_pixel_mm=r.cs_at_calibrated_pixel_mm,
            cs_at_calibrated_pixel_sigma_mm=cs_calibrated_sigma_mm,
            pixel_size_calibrated_A=pixel_calibrated_A, verdict=r.verdict,
            source=r.source))
    nominal = Counter(r.cs_nominal_mm for r in records if r.cs_nominal_mm is not None)
    cs_nominal = nominal.most_common(1)[0][0] if nominal else None
    panel = Panel(instrument, voltage_kv, cs_nominal, datasets,
                  MeanSummary.of(weighted_mean(cs, sigma)), MeanSummary.of(kept),
                  _per_magnification(datasets), _calibrated(datasets), conclusion="")
    panel.conclusion = conclusion(panel)
    return panel


def _per_magnification(datasets: list[DataSet]) -> list[MagnificationSummary]:
    """Per magnification label: the weighted mean of its data sets (outliers included: a
    pixel-size error follows the magnification) and its deviation, in sigma, from the other
    magnifications' data sets (outliers excluded)."""
    out = []
    with_cs = [d for d in datasets if _has_cs(d.refined, d.cs_mm, d.cs_sigma_mm)]
    for label in sorted({d.magnification for d in datasets}):
        members = [d for d in with_cs if d.magnification == label]
        if not members:
            continue
        wm = weighted_mean([d.cs_mm for d in members], [d.cs_sigma_mm for d in members])
        others = [d for d in with_cs if d.magnification != label and not d.outlier]
        dev = None
        if others:
            rest = weighted_mean([d.cs_mm for d in others], [d.cs_sigma_mm for d in others])
            combined = math.sqrt(wm.se**2 + rest.se**2 + rest.tau**2)
            dev = (wm.mean - rest.mean) / combined if combined > 0 else None
        out.append(MagnificationSummary(label, MeanSummary.of(wm), dev))
    return out


def _calibrated(datasets: list[DataSet]) -> MeanSummary | None:
    cal = [d for d in datasets if d.cs_at_calibrated_pixel_sigma_mm]
    if not cal:
        return None
    return MeanSummary.of(weighted_mean([d.cs_at_calibrated_pixel_mm for d in cal],
                                        [d.cs_at_calibrated_pixel_sigma_mm for d in cal]))


def counted(n: int, noun: str) -> str:
    """"1 data set", "6 data sets", "0 outliers"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pm(value: float | None, sigma: float | None) -> str:
    if value is None:
        return "-"
    digits = 3 if sigma is not None and sigma < 0.01 else 2
    return f"{value:.{digits}f} ± {sigma:.{digits}f}" if sigma is not None else f"{value:.{digits}f}"


def explain_outlier(d: DataSet, panel_datasets: list[DataSet], mean_mm: float,
                    se_mm: float) -> str:
    """Why a flagged data set may be off: its calibrated Cs, or the pixel-size error that would
    explain it (and whether the other data sets at that magnification share it)."""
    if d.cs_at_calibrated_pixel_mm is not None and d.cs_at_calibrated_pixel_sigma_mm:
        dev = (d.cs_at_calibrated_pixel_mm - mean_mm) / math.hypot(d.cs_at_calibrated_pixel_sigma_mm,
                                                                    se_mm)
        if abs(dev) <= OUTLIER_SIGMA:
            rel = 100 * (d.pixel_size_calibrated_A / d.pixel_size_A - 1)
            cal = _pm(d.cs_at_calibrated_pixel_mm, d.cs_at_calibrated_pixel_sigma_mm)
            return (f"its Cs at the calibrated pixel size, {cal} mm, agrees with the instrument: "
                    f"the pixel size at that magnification is "
                    f"{abs(rel):.1f}% {'smaller' if rel < 0 else 'larger'} than nominal")
    change = d.pixel_change_explaining
    if change is None:
        return "no explanation available"
    size = f"{abs(100 * change):.1f}% {'smaller' if change < 0 else 'larger'}"
    if abs(change) > PLAUSIBLE_PIXEL_ERROR:
        return (f"a pixel size {size} would be needed to explain it, which is implausible: "
                f"a one-off (specimen, processing) or another error")
    same_mag = [o for o in panel_datasets if o is not d and o.magnification == d.magnification
                and o.deviation_sigma is not None]
    agreeing = [o for o in same_mag if not o.outlier]
    text = f"its apparent Cs is explained by a {size} pixel size at that magnification ({d.magnification})"
    if agreeing:
        text += (f", but {counted(len(agreeing), 'other data set')} at that magnification "
                 f"{'agrees' if len(agreeing) == 1 else 'agree'} with the instrument, so a "
                 f"pixel-size error there is unlikely: a one-off")
    elif same_mag:
        text += (f", as {'is' if len(same_mag) == 1 else 'are'} the "
                 f"{counted(len(same_mag), 'other data set')} at that magnification")
    return text


def conclusion(panel: Panel) -> str:
    """The one-line answer for a panel."""
    kv = f"{panel.voltage_kv:.0f} kV" if panel.voltage_kv else "unknown voltage"
    head = f"{panel.instrument}, {kv}: "
    s = panel.without_outliers
    if not s.n:
        return head + "no refined data set recorded"
    outliers = [d for d in panel.datasets if d.outlier]
    nominal = f"nominal {panel.cs_nominal_mm:g} mm" if panel.cs_nominal_mm is not None else "nominal unknown"
    if panel.cs_nominal_mm is not None and s.se_mm:
        nominal += f", {(s.mean_mm - panel.cs_nominal_mm) / s.se_mm:+.1f}σ"
    text = head + f"Cs {_pm(s.mean_mm, s.se_mm)} mm over {counted(s.n, 'data set')}"
    excluded = f"{counted(len(outliers), 'outlier')} excluded; " if outliers else ""
    text += f" ({excluded}{nominal})"
    if s.chi2_per_dof is not None:
        text += f", χ²/dof {s.chi2_per_dof:.1f}"
        if s.systematic_mm > 0:
            text += f" (systematic scatter {s.systematic_mm:.3f} mm)"
    if not outliers:
        if s.n < MIN_DATASETS_FOR_OUTLIERS:
            return text + "; too few data sets to single out an outlier"
        return text + "; no data set is an outlier"
    parts = []
    for d in outliers:
        parts.append(f"data set {d.label} is an outlier ({_pm(d.cs_mm, d.cs_sigma_mm)}, "
                     f"{d.deviation_sigma:+.0f}σ) and "
                     + explain_outlier(d, panel.datasets, s.mean_mm, s.se_mm or 0.0))
    return text + "; " + "; ".join(parts)


def build_panels(records: list[GroupRecord]) -> list[Panel]:
    """One panel per (instrument, voltage), sorted by instrument and voltage."""
    keys = sorted({(r.instrument, r.voltage_kv) for r in records},
                  key=lambda k: (k[0], k[1] if k[1] is not None else -1))
    return [build_panel(inst, kv, [r for r in records if (r.instrument, r.voltage_kv) == (inst, kv)])
            for inst, kv in keys]


def panels_json(panels: list[Panel]) -> dict:
    """``history show --json``."""
    return {"panels": [asdict(p) for p in panels]}


def _fmt(value, spec: str, none: str = "-", unit: str = "") -> str:
    return none if value is None else format(value, spec) + unit


def panel_text(panel: Panel) -> str:
    """The table and the statistics of one panel, ending with its conclusion."""
    lines = [f"== {panel.instrument}, {_fmt(panel.voltage_kv, '.0f', '?')} kV "
             f"(nominal Cs {_fmt(panel.cs_nominal_mm, 'g')} mm) ==",
             f"{'date':10} {'data set':24} {'magnification':14} {'particles':>9} "
             f"{'Cs (mm)':>8} {'sigma':>6} {'dev':>7}  {'Cs at cal. px':>14}  flag"]
    for d in panel.datasets:
        flag = "OUTLIER" if d.outlier else ("" if d.refined else "not refined")
        lines.append(f"{d.date:10} {d.label[:24]:24} {d.magnification[:14]:14} "
                     f"{_fmt(d.n_particles, 'd'):>9} {_fmt(d.cs_mm, '.3f'):>8} "
                     f"{_fmt(d.cs_sigma_mm, '.3f'):>6} {_fmt(d.deviation_sigma, '+.1f', '-', 'σ'):>7}  "
                     f"{_fmt(d.cs_at_calibrated_pixel_mm, '.3f'):>14}  {flag}")
    means = [(", all", panel.all_data)]
    if panel.without_outliers.n != panel.all_data.n:
        means.append((" without outliers,", panel.without_outliers))
    for name, s in means:
        lines.append(f"weighted mean{name} {s.n}: {_pm(s.mean_mm, s.se_mm)} mm, χ²/dof "
                     f"{_fmt(s.chi2_per_dof, '.2f')}, systematic scatter {s.systematic_mm:.3f} mm")
    for m in panel.magnifications:
        lines.append(f"  magnification {m.magnification}: {_pm(m.stats.mean_mm, m.stats.se_mm)} mm "
                     f"over {m.stats.n}, χ²/dof {_fmt(m.stats.chi2_per_dof, '.2f')}"
                     + (f", {m.deviation_from_other_magnifications_sigma:+.1f}σ from the other "
                        f"magnifications" if m.deviation_from_other_magnifications_sigma is not None
                        else ""))
    if panel.calibrated is not None:
        c = panel.calibrated
        lines.append(f"Cs at the calibrated pixel sizes ({counted(c.n, 'data set')}): "
                     f"{_pm(c.mean_mm, c.se_mm)} mm, χ²/dof {_fmt(c.chi2_per_dof, '.2f')}")
    lines.append(f"outlier rule: {panel.outlier_rule}")
    lines.append(panel.conclusion)
    return "\n".join(lines)
