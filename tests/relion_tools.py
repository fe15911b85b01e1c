"""Drive Debian's RELION 3.1 binaries for simulations and comparisons (tests, benchmarks), and
build STAR tables as pandas DataFrames for starfile (tests, benchmarks; csrefine's own runs
import neither).

relion_project simulates particles with a known Cs, relion_reconstruct makes half maps,
relion_postprocess the FSC STAR that relion_ctf_refine needs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from csrefine.atomic_map import density_map
from csrefine.fsc import default_mask
from csrefine.images import write_map
from csrefine.model import OpticsGroup
from csrefine.relion.star_syntax import unquoted
from csrefine.relion.star_tables import parse_vector, read_tables
from csrefine.relion.star_write import image_names as stack_image_names
from csrefine.relion.star_write import new_optics_columns, new_particle_columns
from csrefine.simulate import random_particles


def particle_table(particles, stack: str | None, micrographs: int = 10,
                   image_names=None) -> pd.DataFrame:
    """The particles table of a new STAR file for starfile.write (tests, benchmarks): images
    ``N@stack`` in order, or ``image_names``; the columns of
    :func:`csrefine.relion.star_write.new_particle_columns`."""
    names = (list(image_names) if image_names is not None
             else stack_image_names(stack, range(len(particles))))
    return pd.DataFrame(new_particle_columns(particles, names, micrographs))


def optics_table(groups) -> pd.DataFrame:
    """The optics table of a new STAR file for starfile.write (tests, benchmarks)."""
    return pd.DataFrame(new_optics_columns(list(groups)))


class RelionError(RuntimeError):
    pass


def have_relion(*tools: str) -> bool:
    tools = tools or ("relion_project", "relion_reconstruct")
    return all(shutil.which(t) for t in tools)


def run_relion(args: list, cwd=None, log=None, timeout_s: float | None = None) -> str:
    """Run a RELION command; raise RelionError with its output tail on failure or after
    ``timeout_s`` seconds (relion_pipeliner waits forever for a job that dies without writing
    its exit file)."""
    try:
        proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        raise RelionError(f"{args[0]} did not finish within {timeout_s} s:\n{out[-2000:]}") from None
    text = proc.stdout + proc.stderr
    if log is not None:
        Path(log).write_text(text)
    if proc.returncode != 0:
        raise RelionError(f"{args[0]} failed ({proc.returncode}):\n{text[-2000:]}")
    return text


def project(map_path, star_path, out_root, pixel_size_A: float, white_noise: float = 0.0,
            cwd=None) -> Path:
    """relion_project --ctf of ``map_path`` for every row of ``star_path``; returns the STAR
    written (``out_root``.star, images in ``out_root``.mrcs)."""
    args = ["relion_project", "--i", map_path, "--ang", star_path, "--o", out_root, "--ctf",
            "--angpix", pixel_size_A]
    if white_noise > 0:
        args += ["--add_noise", "--white_noise", white_noise]
    run_relion(args, cwd=cwd)
    return Path(cwd or ".") / f"{out_root}.star"


def reconstruct_half(star_path, out_path, half: int, cwd=None, maxres_A: float | None = None) -> None:
    """relion_reconstruct --ctf of one random subset (rlnRandomSubset == half)."""
    args = ["relion_reconstruct", "--i", star_path, "--o", out_path, "--ctf", "--subset", half]
    if maxres_A:
        args += ["--maxres", maxres_A]
    run_relion(args, cwd=cwd)


def postprocess(half1_path, mask_path, out_root, pixel_size_A: float, cwd=None,
                randomize_at_A: float | None = None) -> Path:
    """relion_postprocess (half 2 is found by replacing 'half1' with 'half2' in the name).
    ``randomize_at_A`` sets where phases are randomised for the mask correction (needed when the
    FSC never drops below 0.8, e.g. for noise-free test maps)."""
    Path(cwd or ".", out_root).parent.mkdir(parents=True, exist_ok=True)
    args = ["relion_postprocess", "--i", half1_path, "--mask", mask_path, "--o", out_root,
            "--angpix", pixel_size_A, "--auto_bfac", "false", "--adhoc_bfac", "0"]
    if randomize_at_A:
        args += ["--randomize_at_A", randomize_at_A]
    run_relion(args, cwd=cwd)
    return Path(cwd or ".") / f"{out_root}.star"


def simulate_dataset(directory, structure, *, n: int, cs_true_mm: float, cs_nominal_mm: float,
                     box: int = 128, pixel_nominal_A: float = 1.1, pixel_true_A: float | None = None,
                     white_noise: float = 4.0, b_factor_A2: float = 15.0, voltage_kv: float = 300.0,
                     seed: int = 0, reconstruct: bool = True) -> dict:
    """A RELION data set with a known truth, made with RELION's own tools.

    The map of ``structure`` is built at the *true* pixel size; ``relion_project --ctf`` images it
    with the true Cs, defoci and pixel size. The user's STAR (``particles.star``) states the
    nominal pixel size and Cs, with defoci and origins as a CTF fit at that pixel size would give
    them (defocus * (p_nom/p_true)^2, origins * p_nom/p_true); the stack header states the nominal
    pixel size. Half maps come from ``relion_reconstruct --ctf --subset 1|2`` of the user's STAR.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    p_true = pixel_true_A or pixel_nominal_A
    scale = pixel_nominal_A / p_true
    rng = np.random.default_rng(seed)
    write_map(d / "map_true.mrc", density_map(structure, box, p_true, b_factor_A2=b_factor_A2), p_true)
    parts = random_particles(n, rng, max_origin_A=3.0)
    truth = OpticsGroup(1, "opticsGroup1", voltage_kv, cs_true_mm, 0.1, p_true, box)
    starfile.write({"optics": optics_table([truth]), "particles": particle_table(parts, "none.mrcs")},
                   d / "truth.star", overwrite=True)
    project("map_true.mrc", "truth.star", "proj", p_true, white_noise, cwd=d)
    with mrcfile.open(d / "proj.mrcs", mode="r+") as mrc:
        mrc.voxel_size = pixel_nominal_A
    parts.defocus_u_A = parts.defocus_u_A * scale**2
    parts.defocus_v_A = parts.defocus_v_A * scale**2
    parts.origin_x_A = parts.origin_x_A * scale
    parts.origin_y_A = parts.origin_y_A * scale
    nominal = OpticsGroup(1, "opticsGroup1", voltage_kv, cs_nominal_mm, 0.1, pixel_nominal_A, box)
    starfile.write({"optics": optics_table([nominal]), "particles": particle_table(parts, "proj.mrcs")},
                   d / "particles.star", overwrite=True)
    write_map(d / "mask.mrc", default_mask(box), pixel_nominal_A)
    info = {"dir": d, "star": d / "particles.star", "mask": d / "mask.mrc",
            "half1": d / "run_half1_class001_unfil.mrc", "half2": d / "run_half2_class001_unfil.mrc"}
    if reconstruct:
        for h in (1, 2):
            reconstruct_half("particles.star", info[f"half{h}"].name, h, cwd=d)
    return info


def star_values(path) -> dict:
    """Every loop of a STAR file, as csrefine's reader splits it: block -> column -> the values'
    text (without the quotes that protect spaces)."""
    tables, _ = read_tables(path, lambda block, labels: (tuple(labels), frozenset()))
    return {block: {c: [unquoted(v) for v in table.columns[c]] for c in table.labels}
            for block, table in tables.items()}


def relion_rewrite(src, dst, cwd=None) -> dict:
    """``relion_star_handler --i src --o dst`` (the file as RELION reads it, written by RELION);
    returns :func:`star_values` of what RELION wrote. RelionError if RELION refuses the file
    or writes no table (it does so, with exit status 0, for a file it cannot parse, e.g. with
    CRLF line ends)."""
    run_relion(["relion_star_handler", "--i", src, "--o", dst], cwd=cwd)
    values = star_values(Path(cwd or ".") / dst)
    if not values:
        raise RelionError(f"relion_star_handler wrote no table for {src}")
    return values


#: The columns write_updated_star changes.
CHANGED_COLUMNS = ("rlnSphericalAberration", "rlnBeamTiltX", "rlnBeamTiltY", "rlnEvenZernike",
                   "rlnDefocusU", "rlnDefocusV")


def _numbers(text: str):
    return parse_vector(text, text) if text.startswith("[") else np.array([float(text)])


def meant_values(relion_in: dict, cs_mm: dict, defocus_offset_A: dict, beam_tilt_mrad: dict,
                 even_zernike: dict | None = None) -> dict:
    """The numbers the changed columns of RELION's rewrite of csrefine's output should hold
    (block -> column -> one array per row), from RELION's rewrite of the input
    (:func:`relion_rewrite`: optics and particles tables) and the changes given to
    ``write_updated_star``; rlnEvenZernike where the input has none: no terms."""
    optics, particles = relion_in["optics"], relion_in["particles"]
    groups = [int(g) for g in optics["rlnOpticsGroup"]]
    meant = {"optics": {c: [_numbers(v) for v in optics[c]] for c in CHANGED_COLUMNS
                        if c in optics},
             "particles": {c: [_numbers(v) + (defocus_offset_A or {}).get(int(g), 0.0)
                               for v, g in zip(particles[c], particles["rlnOpticsGroup"])]
                           for c in ("rlnDefocusU", "rlnDefocusV")}}
    if even_zernike and "rlnEvenZernike" not in optics:
        meant["optics"]["rlnEvenZernike"] = [np.zeros(0) for _ in groups]
    for row, gid in enumerate(groups):
        new = {"rlnSphericalAberration": cs_mm.get(gid), "rlnEvenZernike":
               (even_zernike or {}).get(gid)}
        new.update(zip(("rlnBeamTiltX", "rlnBeamTiltY"), beam_tilt_mrad.get(gid, (None, None))))
        for column, value in new.items():
            if value is not None and column in meant["optics"]:
                meant["optics"][column][row] = np.atleast_1d(np.asarray(value, dtype=float))
    return meant


def compare_rewrites(relion_in: dict, relion_out: dict, meant: dict, atol: float = 1e-5) -> list:
    """What differs between RELION's rewrites of the input and of csrefine's output, other than
    the intended changes (``meant``, see :func:`meant_values`: compared as numbers to ``atol``;
    RELION writes six decimals, five for some negative numbers: -0.06316 for -0.0631612); every
    other value must have the same text. [] if nothing."""
    problems = []
    if list(relion_out) != list(relion_in):
        return [f"blocks {list(relion_out)} instead of {list(relion_in)}"]
    for block, table in relion_out.items():
        expected = list(relion_in[block]) + [c for c in meant.get(block, {})
                                             if c not in relion_in[block]]
        if list(table) != expected:
            problems.append(f"data_{block}: columns {list(table)} instead of {expected}")
            continue
        for column, values in table.items():
            if column not in meant.get(block, {}):
                if values != relion_in[block][column]:
                    problems.append(f"data_{block} _{column}: {values} instead of "
                                    f"{relion_in[block][column]}")
                continue
            for row, (text, want) in enumerate(zip(values, meant[block][column])):
                got = _numbers(text)
                if got.shape != want.shape or not np.allclose(got, want, rtol=1e-9, atol=atol):
                    problems.append(f"data_{block} _{column} row {row + 1}: {text} instead of "
                                    f"{want.tolist()}")
    return problems
