"""``csrefine refine --particles X.cs ...``: a cryoSPARC particle dataset without a server.

:func:`load_inputs` reads the ``.cs`` dataset (its stacks relative to the project directory),
the half maps, the mask and an optional atomic model into
:class:`csrefine.results.RefinementInputs`; :func:`cs_job` is the job (:class:`csrefine.job.Job`)
that refines them into ``particles.cs``, csrefine.json and logfile.pdf. Nothing is written if
anything fails, and inputs are never modified. :func:`dataset_inputs`, the reading of a
dataset once loaded, serves the cryoSPARC External job too.
"""

from __future__ import annotations

from pathlib import Path

from cryosparc.dataset import Dataset

from csrefine.atomic_map import read_model
from csrefine.errors import InputError
from csrefine.images import read_half_maps
from csrefine.job import Job, execute
from csrefine.options import RefineOptions
from csrefine.outputs import OutputDirectory, print_line
from csrefine.paths import check_input_file
from csrefine.results import Refinement, RefinementInputs, RunResult
from csrefine.run import file_sources

from .aberration_choice import choose_conventions
from .convert import open_images, relion_params_from_cryosparc, updated_dataset

OUTPUT_DATASET = "particles.cs"


def load_dataset(path):
    """``Dataset.load`` with InputError on a missing or unreadable file."""
    path = check_input_file(path, "particle dataset")
    try:
        return Dataset.load(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable cryoSPARC dataset ({exc})") from exc


def load_inputs(particles, half1, half2, mask=None, model=None, project_dir=".", *,
                options: RefineOptions | None = None, progress=None) -> RefinementInputs:
    """Read and validate the dataset, its stacks, the half maps, the mask and the model; then
    let the particles choose the conventions of non-zero higher-order CTF fields
    (:func:`csrefine.cryosparc.aberration_choice.choose_conventions`, with ``options``'s band
    and backend; its decisions go through ``progress``)."""
    project_dir = Path(project_dir)
    if not project_dir.is_dir():
        raise InputError(f"{project_dir}: project directory does not exist")
    structure = read_model(model) if model else None
    dset = load_dataset(particles)
    sources, input_paths = file_sources(particles, half1, half2, mask, model,
                                        project_dir=project_dir)
    return dataset_inputs(dset, project_dir, (half1, half2), mask, structure, sources,
                          what=str(particles), options=options, progress=progress,
                          input_paths=input_paths)


def dataset_inputs(dset, project_dir: Path, half_maps, mask, structure, sources: dict, *,
                   what: str, options: RefineOptions | None, progress,
                   map_pixel_size_A: float | None = None,
                   input_paths: tuple = ()) -> RefinementInputs:
    """A loaded dataset (stacks relative to ``project_dir``), the half-map and mask paths and
    the model as the core's inputs, with conventions chosen as :func:`load_inputs` says.
    what : how messages name the dataset; sources : csrefine.json's ``inputs``;
    map_pixel_size_A : Å (None: the half maps' header); input_paths : no output may replace them.
    """
    groups, parts, paths, indices = relion_params_from_cryosparc(dset, project_dir, what=what)
    images = open_images(dset, groups, paths, indices, parts.optics_group)
    maps, m, header_px = read_half_maps(half_maps[0], half_maps[1], mask)
    inputs = RefinementInputs(groups, parts, images, maps, m, map_pixel_size_A or header_px,
                              structure, sources, source=dset, warnings=list(images.warnings),
                              input_paths=input_paths)
    return choose_conventions(inputs, options, progress)


def write_dataset(path: Path, result: RunResult) -> None:
    """The input dataset with the refined ``ctf/cs_mm`` and defocus."""
    with open(path, "wb") as fh:
        updated_dataset(result.inputs.source, result.refinement).save(fh)


def cs_job(particles, half1, half2, out_dir, options: RefineOptions, *, mask=None,
           model=None, project_dir=".", progress=print_line) -> Job:
    """The job refining the ``.cs`` dataset ``particles`` into ``out_dir`` (``project_dir``
    resolves relative ``blob/path`` values; default: the working directory; ``progress``:
    where its lines go)."""
    destination = OutputDirectory(out_dir, OUTPUT_DATASET, write_dataset, progress=progress)
    return Job(options, lambda: load_inputs(particles, half1, half2, mask, model, project_dir,
                                            options=options, progress=progress),
               destination)


def run(particles, half1, half2, out_dir, *, mask=None, model=None, project_dir=".",
        options: RefineOptions | None = None, progress=print_line,
        should_abort=None) -> Refinement:
    """Run :func:`cs_job` in this process; returns the refinement."""
    job = cs_job(particles, half1, half2, out_dir, (options or RefineOptions()).validate(),
                 mask=mask, model=model, project_dir=project_dir, progress=progress)
    if should_abort is not None:
        job.should_abort = should_abort
    return execute(job).refinement
