"""``csrefine refine --particles X.cs ...``: a cryoSPARC particle dataset without a server.

:func:`load_inputs` reads the ``.cs`` dataset (its stacks relative to the project directory),
the half maps, the mask and an optional atomic model into
:class:`csrefine.run.RefinementInputs`; :func:`output_directory` writes ``particles.cs`` beside
csrefine.json and logfile.pdf; :func:`run` does both around
:func:`csrefine.run.run_refinement`. Nothing is written if anything fails, and inputs are never
modified.
"""

from __future__ import annotations

from pathlib import Path

from csrefine.atomic_map import read_model
from csrefine.errors import InputError
from csrefine.images import read_half_maps
from csrefine.io_atomic import atomic_output
from csrefine.options import RefineOptions
from csrefine.paths import check_input_file
from csrefine.pipeline import Refinement
from csrefine.run import OutputDirectory, RefinementInputs, RunResult, file_sources, run_refinement

from .aberration_choice import choose_conventions
from .convert import open_images, relion_params_from_cryosparc, updated_dataset

OUTPUT_DATASET = "particles.cs"


def load_dataset(path):
    """``Dataset.load`` with InputError on a missing or unreadable file."""
    from cryosparc.dataset import Dataset

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
    groups, parts, paths, indices = relion_params_from_cryosparc(dset, project_dir,
                                                                 what=str(particles))
    images = open_images(dset, groups, paths, indices, parts.optics_group)
    half_maps, m, px = read_half_maps(half1, half2, mask)
    sources, input_paths = file_sources(particles, half1, half2, mask, model,
                                        project_dir=project_dir)
    inputs = RefinementInputs(groups, parts, images, half_maps, m, px, structure, sources,
                              source=dset, warnings=list(images.warnings),
                              input_paths=input_paths)
    return choose_conventions(inputs, options, progress)


def write_dataset(path: Path, result: RunResult) -> None:
    """The input dataset with the refined ``ctf/cs_mm`` and defocus (atomically)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        updated_dataset(result.inputs.source, result.refinement).save(fh)


def output_directory(out_dir) -> OutputDirectory:
    """The run's outputs in ``out_dir``: particles.cs, csrefine.json, logfile.pdf."""
    return OutputDirectory(out_dir, OUTPUT_DATASET, write_dataset)


def run(particles, half1, half2, out_dir, *, mask=None, model=None, project_dir=".",
        options: RefineOptions | None = None, progress=None,
        should_abort=None) -> Refinement:
    """Refine the ``.cs`` dataset ``particles`` against the half maps; write into ``out_dir``.

    ``project_dir`` resolves relative ``blob/path`` values (default: the working directory).
    """
    result = run_refinement(
        lambda: load_inputs(particles, half1, half2, mask, model, project_dir, options=options,
                            progress=progress), options,
        output_directory(out_dir), progress, should_abort)
    return result.refinement
