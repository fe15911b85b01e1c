"""The particle STAR a run writes: the input STAR with the refined values of its optics groups."""

from __future__ import annotations

from pathlib import Path

from csrefine.results import Refinement, RunResult
from csrefine.rounds import updated_groups

from .star_io import ParticleStar, write_updated_star


def refined_values(star: ParticleStar, refinement: Refinement):
    """New Cs, defocus offsets, rescaled beam tilts and even Zernike terms of the refined groups,
    the arguments of :func:`write_updated_star` after ``dst``.

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


def write_refined_star(path: Path, star: ParticleStar, refinement: Refinement) -> None:
    """``star`` with the refined values of ``refinement`` (:func:`refined_values`)."""
    write_updated_star(star, path, *refined_values(star, refinement))


def write_star(path: Path, result: RunResult) -> None:
    """A run's output STAR: its input STAR with the refined values."""
    write_refined_star(path, result.inputs.source, result.refinement)
