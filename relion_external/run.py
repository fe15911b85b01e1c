"""RELION inputs into the core's run, the core's results into RELION files.

:func:`load_inputs` reads the inputs; :func:`relion_job` is the job (:class:`csrefine.job.Job`)
that refines into an output directory (the STAR by :func:`csrefine.relion.updated_star.write_star`),
which ``csrefine refine`` and the External job run. Stack paths in rlnImageName are relative to
the RELION project directory (``base_dir``, the working directory).
"""

from __future__ import annotations

from pathlib import Path

from csrefine.atomic_map import read_model
from csrefine.errors import InputError
from csrefine.images import StackReader, read_half_maps
from csrefine.job import Job, execute
from csrefine.model import per_particle_geometry
from csrefine.options import RefineOptions
from csrefine.outputs import FileWriter, OutputDirectory
from csrefine.paths import check_input_file
from csrefine.results import Refinement, RefinementInputs
from csrefine.run import file_sources

from .rounds import RelionReconstructor, kept_map_files, round_map_names
from .star_io import ParticleStar, read_particle_star
from .updated_star import write_star

DEFAULT_STAR_NAME = "particles.star"


def stack_reader(star: ParticleStar, base_dir: Path) -> StackReader:
    """Reader of the STAR's particle images; relative stack paths are taken from ``base_dir``
    (the RELION project directory, i.e. the working directory). Each particle's box and pixel
    size are its optics group's."""
    paths = [p if Path(p).is_absolute() else str(base_dir / p) for p in star.stack_paths]
    missing = next((given for given, path in zip(star.stack_paths, paths)
                    if not Path(path).exists()), None)
    if missing is not None and not Path(missing).is_absolute():
        raise InputError(f"{missing}: particle stack not found (the paths in rlnImageName are "
                         f"relative to the RELION project directory; {Path(base_dir).resolve()} "
                         f"is not it: run from the project directory)")
    return StackReader.from_codes(paths, star.stack_code, star.image_index,
                                  *per_particle_geometry(star.groups, star.particles.optics_group))


def load_inputs(particles, half1, half2, mask=None, model=None,
                base_dir=".") -> RefinementInputs:
    """Read and validate the particle STAR, its stacks, the half maps, the mask and the model
    (every named file checked to exist first, so that a wrong directory shows at once)."""
    for path, what in ((half1, "half map 1"), (half2, "half map 2"), (mask, "mask"),
                       (model, "atomic model")):
        if path:
            check_input_file(path, what)
    structure = read_model(model) if model else None
    star = read_particle_star(particles, base_dir)
    images = stack_reader(star, Path(base_dir))
    (h1, h2), m, px = read_half_maps(half1, half2, mask)
    sources, paths = file_sources(particles, half1, half2, mask, model)
    return RefinementInputs(star.groups, star.particles, images, (h1, h2), m, px, structure,
                            sources, source=star, warnings=list(images.warnings),
                            input_paths=paths)


def relion_job(particles, half1, half2, out_dir, options: RefineOptions, *, mask=None,
               model=None, base_dir=".", extra_files: dict[str, FileWriter] | None = None,
               directory_class=OutputDirectory, star_name: str = DEFAULT_STAR_NAME) -> Job:
    """The job refining a particle STAR into ``out_dir`` (``star_name``, csrefine.json,
    logfile.pdf and ``extra_files``), in a ``directory_class`` destination.

    With ``options.rounds`` > 1 the half maps are rebuilt between rounds with relion_reconstruct
    (:mod:`csrefine.relion.rounds`): InputError before any work when it is not on PATH.
    """
    reconstruct, more = None, {}
    if options.rounds > 1:
        reconstruct = RelionReconstructor(out_dir, base_dir, options.threads,
                                          keep_maps=options.keep_round_maps == "yes")
        more = dict(result_files=kept_map_files, cleanups=(reconstruct.cleanup,),
                    reserved_names=round_map_names(options.rounds))
    destination = directory_class(out_dir, star_name, write_star, extra_files, **more)
    return Job(options, lambda: load_inputs(particles, half1, half2, mask, model, base_dir),
               destination, reconstruct)


def run(particles, half1, half2, out_dir, *, mask=None, options: RefineOptions | None = None,
        base_dir=".", model=None, progress=None, should_abort=None) -> Refinement:
    """Refine and write ``out_dir``/particles.star, ``csrefine.json`` and ``logfile.pdf`` (the
    job of :func:`relion_job`, run in this process; ``progress``: where its lines go, default
    stdout); returns the refinement."""
    job = relion_job(particles, half1, half2, out_dir, (options or RefineOptions()).validate(),
                     mask=mask, model=model, base_dir=base_dir)
    if progress is not None:
        job.destination.progress = progress
    if should_abort is not None:
        job.should_abort = should_abort
    return execute(job).refinement
