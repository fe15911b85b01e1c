"""Run a refinement on RELION inputs and write the outputs (shared by the CLI and External job).

Order of work: read and validate every input, refine, then write outputs atomically. Nothing is
written before the refinement has succeeded, and inputs are never modified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csrefine.atomic_map import read_model
from csrefine.errors import InputError
from csrefine.images import StackReader, read_half_maps
from csrefine.model import per_particle_geometry
from csrefine.pipeline import RefineOptions, Refinement, refine
from csrefine.preload import start_preload
from csrefine.report import build_report, write_reports
from csrefine.zernike import rescale_beam_tilt

from .star_io import ParticleStar, read_particle_star, write_updated_star


def stack_reader(star: ParticleStar, base_dir: Path) -> StackReader:
    """Reader of the STAR's particle images; relative stack paths are taken from ``base_dir``
    (the RELION project directory, i.e. the working directory). Each particle's box and pixel
    size are its optics group's."""
    paths = [p if Path(p).is_absolute() else str(base_dir / p) for p in star.stack_paths]
    return StackReader.from_codes(paths, star.stack_code, star.image_index,
                                  *per_particle_geometry(star.groups, star.particles.optics_group))


@dataclass
class Inputs:
    star: ParticleStar
    images: StackReader
    half_maps: tuple
    mask: np.ndarray | None
    map_pixel_size_A: float | None


def load_inputs(particles, half1, half2, mask=None, base_dir=".") -> Inputs:
    """Read and validate the particle STAR, its stacks, the half maps and the mask."""
    star = read_particle_star(particles)
    images = stack_reader(star, Path(base_dir))
    (h1, h2), m, px1 = read_half_maps(half1, half2, mask)
    return Inputs(star, images, (h1, h2), m, px1 or None)


def refined_values(star: ParticleStar, refinement: Refinement):
    """New Cs, defocus offsets and rescaled beam tilts for the refined groups."""
    cs, offsets, tilts = {}, {}, {}
    for g in refinement.groups:
        if not g.refined:
            continue
        group = star.groups[g.optics_group]
        cs[g.optics_group] = g.cs_refined_mm
        offsets[g.optics_group] = g.defocus_offset_A
        if group.has_beam_tilt:
            tilts[g.optics_group] = tuple(rescale_beam_tilt(
                [group.beam_tilt_x_mrad, group.beam_tilt_y_mrad], group.cs_mm, g.cs_refined_mm))
    return cs, offsets, tilts


def run(particles, half1, half2, out_dir, *, mask=None, options: RefineOptions | None = None,
        out_star_name="particles.star", base_dir=".", progress=None, should_abort=None,
        inputs_note: dict | None = None, model=None) -> Refinement:
    """Refine and write ``out_dir/out_star_name``, ``csrefine.json`` and ``logfile.pdf``.

    ``model``: optional atomic model file docked in the map, to calibrate the pixel size.
    """
    t0 = time.monotonic()
    start_preload(options.device if options else "auto")
    structure = read_model(model) if model else None
    inputs = load_inputs(particles, half1, half2, mask, base_dir)
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: output directory does not exist")
    refinement = refine(inputs.star.groups, inputs.star.particles, inputs.images, inputs.half_maps,
                        inputs.mask, inputs.map_pixel_size_A, options, progress, should_abort)
    cs, offsets, tilts = refined_values(inputs.star, refinement)
    if should_abort is not None and should_abort():
        from csrefine.errors import AbortRequested
        raise AbortRequested("abort requested")
    note = {"particles": str(particles), "half_maps": [str(half1), str(half2)],
            "mask": str(mask) if mask else None, "model": str(model) if model else None,
            **(inputs_note or {})}
    report, calibration = build_report(refinement, note, structure, inputs.half_maps, inputs.mask,
                                       refinement.map_pixel_size_A)
    refinement.timings_s["wall"] = time.monotonic() - t0
    report["timings_s"]["wall"] = refinement.timings_s["wall"]
    write_updated_star(inputs.star, out_dir / out_star_name, cs, offsets, tilts)
    write_reports(out_dir, refinement, report, calibration, progress)
    return refinement
