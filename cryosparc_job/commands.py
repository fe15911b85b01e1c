"""The cryoSPARC adapter's part of the ``csrefine`` command (entry point ``csrefine.adapters``):
``csrefine refine --particles P.cs --project-dir DIR ...`` without a cryoSPARC server, and
``csrefine convert`` between a RELION particle STAR and a cryoSPARC ``.cs`` dataset."""

from __future__ import annotations

import sys
from pathlib import Path

from csrefine.errors import InputError
from csrefine.io_atomic import atomic_output
from csrefine.job import Job
from csrefine.relion.star_io import read_particle_star
from csrefine.relion.star_write import image_names, write_new_star

from .convert import (
    cryosparc_dataset_from_relion,
    image_signs,
    relion_params_from_cryosparc,
    resolve_blob_paths,
)
from .offline import cs_job, load_dataset

PARTICLE_SUFFIXES = (".cs",)


def refine_job(args, options) -> Job:
    """``csrefine refine`` with a cryoSPARC ``.cs`` dataset (``blob/path`` relative to
    ``--project-dir``, default the working directory)."""
    return cs_job(args.particles, args.half_maps[0], args.half_maps[1], args.out, options,
                  mask=args.mask, model=args.model, project_dir=args.project_dir or ".")


def add_commands(subparsers) -> dict:
    """``csrefine convert IN OUT``: RELION STAR <-> cryoSPARC .cs, the fields csrefine uses."""
    c = subparsers.add_parser(
        "convert", help="convert particles between a RELION STAR and a cryoSPARC .cs",
        description="Convert particles between a RELION particle STAR (run from the RELION "
                    "project directory: stack paths are relative to it) and a cryoSPARC .cs "
                    "dataset (blob/path relative to --project-dir), for the fields csrefine uses "
                    "(blob, ctf, alignments3D), with the conversions of README's 'Conventions at "
                    "the boundary'.")
    c.add_argument("input", help="particles.star or particles.cs")
    c.add_argument("output", help="particles.cs or particles.star (never the input)")
    c.add_argument("--project-dir", default=".",
                   help="the cryoSPARC project directory that blob/path is relative to "
                        "(default: the working directory)")
    return {"convert": convert}


def convert(args) -> int:
    """The ``convert`` command; InputError on unusable input, nothing written then."""
    src, dst = Path(args.input), Path(args.output)
    kinds = (src.suffix.lower(), dst.suffix.lower())
    if kinds == (".star", ".cs"):
        n = star_to_cs(src, dst, Path(args.project_dir))
    elif kinds == (".cs", ".star"):
        n = cs_to_star(src, dst, Path(args.project_dir))
    else:
        raise InputError(f"convert {src} -> {dst}: give a .star and a .cs (either way round)")
    print(f"csrefine: wrote {n} particles to {dst}", flush=True)
    return 0


def star_to_cs(src: Path, dst: Path, project_dir: Path) -> int:
    """A RELION STAR (stacks relative to the working directory) as a .cs (blob/path relative to
    ``project_dir``, location/micrograph_path likewise from rlnMicrographName where the STAR has
    it; blob/sign +1: RELION's images are protein-positive)."""
    star = read_particle_star(src, text_columns=("rlnMicrographName",))
    dset = cryosparc_dataset_from_relion(star, project_dir, base_dir=".",
                                         micrographs=star.text.get("rlnMicrographName"))
    with atomic_output(dst) as tmp, open(tmp, "wb") as fh:
        dset.save(fh)
    return len(dset)


def micrograph_names(dset, stack_paths: list[str], project_dir, what: str) -> list[str]:
    """Each particle's micrograph for rlnMicrographName: ``location/micrograph_path`` where the
    dataset has it, read as ``blob/path`` is (:func:`csrefine.cryosparc.convert.resolve_blob_paths`
    against ``project_dir``), else its stack (cryoSPARC extracts one stack per micrograph)."""
    if "location/micrograph_path" not in set(dset.fields()):
        return list(stack_paths)
    return resolve_blob_paths(dset["location/micrograph_path"], project_dir, what,
                              field="location/micrograph_path")


def cs_to_star(src: Path, dst: Path, project_dir: Path) -> int:
    """A .cs as a RELION STAR (image names 'N@path' with the paths as resolved against
    ``project_dir``; rlnMicrographName from :func:`micrograph_names`). Higher-order CTF fields
    become rlnOddZernike / rlnEvenZernike / rlnMagMat in the most likely convention (the
    particles cannot choose without a refinement); images with blob/sign -1 are dark-protein and
    would need inverting for RELION: said on stderr."""
    dset = load_dataset(src)
    groups, particles, paths, indices = relion_params_from_cryosparc(dset, project_dir,
                                                                     what=str(src))
    write_new_star(dst, [groups[g] for g in sorted(groups)], particles, image_names(paths, indices),
                   micrograph_names=micrograph_names(dset, paths, project_dir, str(src)))
    if (image_signs(dset) < 0).any():
        print(f"csrefine: warning: {src} has blob/sign -1 (images with dark protein, as cryoSPARC "
              f"extracts them); RELION expects them inverted (its 'invert contrast')",
              file=sys.stderr)
    return len(dset)
