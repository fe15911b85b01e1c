"""RELION inputs into the core's run, the core's results into RELION files.

:func:`load_inputs` reads a particle STAR, its stacks, the half maps, the mask and an optional
atomic model into :class:`csrefine.run.RefinementInputs`; :func:`output_directory` writes the
updated STAR beside csrefine.json and logfile.pdf; :func:`run` does both around
:func:`csrefine.run.run_refinement`. Stack paths in rlnImageName are relative to the RELION
project directory (``base_dir``, the working directory).
"""

from __future__ import annotations

from pathlib import Path

from csrefine.atomic_map import read_model
from csrefine.images import StackReader, read_half_maps
from csrefine.model import per_particle_geometry
from csrefine.options import RefineOptions
from csrefine.pipeline import Refinement
from csrefine.rounds import updated_groups
from csrefine.run import (
    FileWriter,
    OutputDirectory,
    RefinementInputs,
    RunResult,
    file_sources,
    run_refinement,
)

from .star_io import ParticleStar, read_particle_star, write_updated_star

DEFAULT_STAR_NAME = "particles.star"


def stack_reader(star: ParticleStar, base_dir: Path) -> StackReader:
    """Reader of the STAR's particle images; relative stack paths are taken from ``base_dir``
    (the RELION project directory, i.e. the working directory). Each particle's box and pixel
    size are its optics group's."""
    paths = [p if Path(p).is_absolute() else str(base_dir / p) for p in star.stack_paths]
    return StackReader.from_codes(paths, star.stack_code, star.image_index,
                                  *per_particle_geometry(star.groups, star.particles.optics_group))


def load_inputs(particles, half1, half2, mask=None, model=None,
                base_dir=".") -> RefinementInputs:
    """Read and validate the particle STAR, its stacks, the half maps, the mask and the model."""
    structure = read_model(model) if model else None
    star = read_particle_star(particles, base_dir)
    images = stack_reader(star, Path(base_dir))
    (h1, h2), m, px = read_half_maps(half1, half2, mask)
    sources, paths = file_sources(particles, half1, half2, mask, model)
    return RefinementInputs(star.groups, star.particles, images, (h1, h2), m, px, structure,
                            sources, source=star, warnings=list(images.warnings),
                            input_paths=paths)


def refined_values(star: ParticleStar, refinement: Refinement):
    """New Cs, defocus offsets, rescaled beam tilts and even Zernike terms of the refined groups.

    The optics table gets the total refined Cs; an isotropic k^4 part of rlnEvenZernike (Z4^0
    after CtfRefine's 4th-order fit) is folded out of the Zernike terms into that Cs, its lower
    orders moved to Z2^0/Z0^0, so that RELION's phase changes only by the refined change. Beam
    tilts are rescaled by Cs_old/Cs_new (RELION derives the coma from the table's Cs).
    """
    cs, offsets, tilts, even = {}, {}, {}, {}
    updated = updated_groups(star.groups, refinement)  # the one definition of the new optics
    for g in refinement.groups:
        if not g.refined:
            continue
        gid, new = g.optics_group, updated[g.optics_group]
        cs[gid] = new.cs_mm
        offsets[gid] = g.defocus_offset_A
        if star.groups[gid].has_beam_tilt:
            tilts[gid] = (new.beam_tilt_x_mrad, new.beam_tilt_y_mrad)
        if g.cs_zernike_mm:
            even[gid] = new.even_zernike
    return cs, offsets, tilts, even


def write_star(path: Path, result: RunResult) -> None:
    """The input STAR with the refined values (see :func:`write_updated_star`)."""
    star = result.inputs.source
    write_updated_star(star, path, *refined_values(star, result.refinement))


def output_directory(out_dir, star_name: str = DEFAULT_STAR_NAME,
                     extra_files: dict[str, FileWriter] | None = None) -> OutputDirectory:
    """The run's outputs in ``out_dir``: ``star_name``, csrefine.json, logfile.pdf (+ extras)."""
    return OutputDirectory(out_dir, star_name, write_star, extra_files)


def run(particles, half1, half2, out_dir, *, mask=None, options: RefineOptions | None = None,
        out_star_name: str = DEFAULT_STAR_NAME, base_dir=".", progress=None, should_abort=None,
        model=None, extra_files: dict[str, FileWriter] | None = None) -> Refinement:
    """Refine and write ``out_dir/out_star_name``, ``csrefine.json`` and ``logfile.pdf``.

    ``model``: optional atomic model file docked in the map, to calibrate the pixel size.
    With ``options.rounds`` > 1 the half maps are rebuilt between rounds with relion_reconstruct
    (:mod:`csrefine.relion.rounds`); InputError before any work when it is not on PATH.
    """
    writer, reconstruct = output_directory(out_dir, out_star_name, extra_files), None
    if options is not None and options.validate().rounds > 1:
        from .rounds import RelionReconstructor, RoundsOutputDirectory

        reconstruct = RelionReconstructor(out_dir, base_dir, options.threads,
                                          keep_maps=options.keep_round_maps == "yes")
        writer = RoundsOutputDirectory(out_dir, out_star_name, write_star, extra_files,
                                       reconstruct, options.rounds)
    result = run_refinement(lambda: load_inputs(particles, half1, half2, mask, model, base_dir),
                            options, writer, progress, should_abort, reconstruct=reconstruct)
    return result.refinement
