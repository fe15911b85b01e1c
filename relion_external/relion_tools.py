"""Drive Debian's RELION 3.1 binaries for simulations and comparisons (tests, benchmarks).

relion_project simulates particles with a known Cs, relion_reconstruct makes half maps,
relion_postprocess the FSC STAR that relion_ctf_refine needs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class RelionError(RuntimeError):
    pass


def have_relion(*tools: str) -> bool:
    tools = tools or ("relion_project", "relion_reconstruct")
    return all(shutil.which(t) for t in tools)


def run_relion(args: list, cwd=None, log=None) -> str:
    """Run a RELION command; raise RelionError with its output tail on failure."""
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
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
