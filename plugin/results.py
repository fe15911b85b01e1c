"""The records a refinement run reads and produces: its inputs in the core's conventions, the
per-group results, the whole refinement and a finished run.

Typed records only; the computations live in :mod:`csrefine.pipeline` (refinement),
:mod:`csrefine.rounds` and :mod:`csrefine.run`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .model import OpticsGroup, Particles

if TYPE_CHECKING:  # the rounds' records refer to these records: imported for annotations only
    from .rounds import RoundsOutcome


class ImageSource(Protocol):
    """Particle images in particle order: ``read(positions, out=None) -> (k, box, box)``, and
    ``describe(position)``, how a message names one ('image 12 of Extract/job001/x.mrcs')."""

    def read(self, positions, out=None) -> np.ndarray: ...

    def describe(self, position: int) -> str: ...


@dataclass
class RefinementInputs:
    """Everything a run reads, in the core's conventions (RELION's; units in the names).

    groups : optics groups by RELION number; particles : all particles, file order;
    images : their images; half_maps : (half 1, half 2) real-space maps, [z, y, x];
    mask : optional FSC mask (same shape); map_pixel_size_A : the maps' header pixel size if
    set; structure : optional gemmi Structure docked in the map (pixel-size calibration);
    sources : what was read, for csrefine.json's ``inputs`` (file names, as given);
    source : the adapter's own parsed input (a ParticleStar, a cryoSPARC Dataset), which its
    writer uses to write the updated particles; input_paths : files the outputs must never
    replace; warnings : what the adapter found worth telling while reading (printed, and listed
    in csrefine.json's ``warnings``); report_extra : adapter facts for csrefine.json (top-level
    keys, e.g. the conventions a conversion used).
    """

    groups: dict[int, OpticsGroup]
    particles: Particles
    images: ImageSource
    half_maps: tuple[np.ndarray, np.ndarray]
    mask: np.ndarray | None = None
    map_pixel_size_A: float | None = None
    structure: object | None = None
    sources: dict = field(default_factory=dict)
    source: object | None = None
    input_paths: tuple = ()
    warnings: list = field(default_factory=list)
    report_extra: dict = field(default_factory=dict)


@dataclass
class GroupResult:
    """Refinement of one optics group; the JSON report holds these fields (but ``curves``).

    cs_nominal_mm : the optics table's Cs (rlnSphericalAberration / ctf/cs_mm);
    cs_zernike_mm : the Cs equivalent of the isotropic k^4 part the input's even aberrations
        already held (RELION's Z4^0 after CtfRefine's 4th-order fit; 0 if none);
    cs_refined_mm : the total refined k^4 coefficient, i.e. the microscope's apparent Cs
        (cs_nominal_mm + cs_zernike_mm + the change the data asked for); where the group was not
        refined, the input's effective Cs (cs_nominal_mm + cs_zernike_mm);
    cs_sigma_mm : the jackknife standard error; cs_sigma_curvature_mm : from the likelihood's
        curvature; cs_change_z : (cs_refined_mm - cs_nominal_mm) / cs_sigma_mm;
    band_A : the group's fitted band (its high end capped at the group's Nyquist);
    half_maps : the check of the half maps against the particles' half sets
        (:class:`csrefine.halfsets.HalfMapCheck` as a dict; empty if not made);
    contrast : the particles' contrast relative to the maps ("as the maps", or "inverted": the
        group was refined with the images' sign flipped);
    images_downweighted : images of unusual power given less weight (:mod:`csrefine.screening`);
    anisotropy : the anisotropic part of the measured phase vs the isotropic change at the
        band's edge (:meth:`csrefine.phase_map.PhaseMap.summary`).
    """

    optics_group: int
    name: str
    n_particles: int
    refined: bool
    reason: str
    cs_nominal_mm: float
    cs_refined_mm: float
    cs_sigma_mm: float | None
    cs_sigma_curvature_mm: float | None
    cs_subsets_mm: list
    defocus_offset_A: float
    defocus_offset_sigma_A: float | None
    pixel_size_A: float
    pixel_size_if_cs_nominal_A: float | None
    resolution_impact_A: float | None
    band_A: list
    voltage_kv: float
    cs_zernike_mm: float = 0.0
    cs_change_z: float | None = None
    half_maps: dict = field(default_factory=dict)
    anisotropy: dict = field(default_factory=dict)
    contrast: str = "as the maps"
    images_downweighted: int = 0
    curves: dict = field(default_factory=dict, repr=False)


@dataclass
class Refinement:
    """Result of :func:`refine`: per-group results, the half-map FSC and the band."""

    groups: list
    fsc: np.ndarray
    resolution_A: float
    band_A: list
    backend: str
    timings_s: dict
    map_pixel_size_A: float | None = None  # the half maps' pixel size the groups were scaled to
    warnings: list = field(default_factory=list)  # each also printed through progress

    def group(self, optics_group: int) -> GroupResult:
        return next(g for g in self.groups if g.optics_group == optics_group)


def result_dict(result: GroupResult) -> dict:
    """JSON-ready dict of a group result (without the plot curves, which are not copied)."""
    d = asdict(replace(result, curves={}))
    d.pop("curves")
    return d


@dataclass
class RunResult:
    """A finished run: the refinement, csrefine.json's content and the calibration (or None)."""

    inputs: RefinementInputs
    refinement: Refinement
    report: dict
    calibration: object | None = None
    rounds: RoundsOutcome | None = None  # with options.rounds > 1: per-round records, rebuilt maps


