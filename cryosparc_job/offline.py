"""``csrefine refine --particles X.cs ...``: refine a cryoSPARC particle dataset without a server.

Order of work mirrors the RELION adapter: read and validate every input, refine, then write the
outputs (``particles.cs``, ``csrefine.json``, ``logfile.pdf``) through temporary files and
renames. Nothing is written if anything fails, and inputs are never modified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csrefine.atomic_map import read_model
from csrefine.errors import AbortRequested, InputError
from csrefine.atomic import atomic_output
from csrefine.images import read_half_maps
from csrefine.pipeline import RefineOptions, Refinement, refine
from csrefine.preload import start_preload
from csrefine.report import build_report, write_reports

from .convert import open_images, relion_params_from_cryosparc, updated_dataset


def load_dataset(path):
    """``Dataset.load`` with InputError on a missing or unreadable file."""
    from cryosparc.dataset import Dataset

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such particle dataset")
    try:
        return Dataset.load(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable cryoSPARC dataset ({exc})") from exc


@dataclass
class Inputs:
    dset: object
    groups: dict
    particles: object
    images: object
    half_maps: tuple
    mask: np.ndarray | None
    map_pixel_size_A: float | None




def load_inputs(dset, project_dir, half1, half2, mask=None, what="particles") -> Inputs:
    groups, particles, paths, indices = relion_params_from_cryosparc(dset, project_dir, what=what)
    images = open_images(dset, groups, paths, indices, particles.optics_group)
    half_maps, m, px = read_half_maps(half1, half2, mask)
    return Inputs(dset, groups, particles, images, half_maps, m, px)


def save_dataset_atomic(dset, path) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        dset.save(fh)


def run_offline(args, options: RefineOptions | None = None, progress=None,
                should_abort=None) -> Refinement:
    """Refine ``args.particles`` (.cs) against ``args.half_maps``; write into ``args.out``.

    ``args.project_dir`` resolves relative ``blob/path`` values (default: the working directory).
    """
    t0 = time.monotonic()
    if progress is None:
        progress = lambda s: print(s, flush=True)  # noqa: E731
    project_dir = Path(args.project_dir) if getattr(args, "project_dir", None) else Path(".")
    if not project_dir.is_dir():
        raise InputError(f"{project_dir}: project directory does not exist")
    start_preload(options.device if options else "auto")
    model = getattr(args, "model", None)
    structure = read_model(model) if model else None
    dset = load_dataset(args.particles)
    inputs = load_inputs(dset, project_dir, args.half_maps[0], args.half_maps[1],
                         getattr(args, "mask", None), what=str(args.particles))
    refinement = refine(inputs.groups, inputs.particles, inputs.images, inputs.half_maps,
                        inputs.mask, inputs.map_pixel_size_A, options, progress, should_abort)
    if should_abort is not None and should_abort():
        raise AbortRequested("abort requested")
    out_dset = updated_dataset(dset, refinement)
    refinement.timings_s["wall"] = time.monotonic() - t0
    note = {"particles": str(args.particles), "project_dir": str(project_dir),
            "half_maps": [str(h) for h in args.half_maps],
            "mask": str(args.mask) if getattr(args, "mask", None) else None,
            "model": str(model) if model else None}
    report, calibration = build_report(refinement, note, structure, inputs.half_maps, inputs.mask,
                                       refinement.map_pixel_size_A)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_dataset_atomic(out_dset, out / "particles.cs")
    write_reports(out, refinement, report, calibration, progress)
    return refinement
