"""Refinement rounds on the RELION path: half maps rebuilt with ``relion_reconstruct``.

Before round r, the particles as the output STAR would state them after round r-1 (refined
rlnSphericalAberration, shifted defoci, rescaled beam tilt, folded Zernike terms: the same
writer as the output) go into a STAR in a hidden working directory inside the output directory,
and ``relion_reconstruct --ctf --subset 1|2`` rebuilds each half map from it (the two halves at
once when ``--j`` allows two processes; ``--j`` is passed on to RELION versions that take it).
Nothing the user gave is modified. Rebuilt maps are outputs ``roundR_half1.mrc`` /
``roundR_half2.mrc`` (RELION half-map nodes) or, with ``keep_round_maps no``, removed with the
working directory when the run ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from functools import cached_property
from pathlib import Path

from csrefine.errors import InputError, check_abort
from csrefine.images import read_half_maps
from csrefine.paths import ROUNDS_WORK_PREFIX
from csrefine.results import RunResult
from csrefine.rounds import HalfMaps, RoundCost

from .nodes import round_map_name
from .updated_star import write_refined_star

RECONSTRUCT = "relion_reconstruct"
#: Peak memory of relion_reconstruct per voxel of the padded (x2) volume, bytes: 273 MB
#: resident for box 96 (192^3 voxels), Debian's RELION 3.1.3.
BYTES_PER_PADDED_VOXEL = 40.0
RECONSTRUCT_PAD = 2
#: Wall time of relion_reconstruct (one thread) per particle-image pixel inserted, and per
#: padded voxel for the gridding correction; seconds (this machine, RELION 3.1.3: 8 s for 2,000
#: particles of box 96).
SECONDS_PER_IMAGE_PIXEL = 3.4e-7
SECONDS_PER_PADDED_VOXEL = 2.8e-7
#: How often (s) a running reconstruction is checked for its end and for an abort request.
POLL_S = 0.2


def require_reconstruct() -> str:
    """The path of relion_reconstruct, or InputError (one line) when it is not on PATH."""
    path = shutil.which(RECONSTRUCT)
    if path is None:
        raise InputError(f"rounds > 1 rebuilds the half maps with {RECONSTRUCT}, which is not on "
                         f"PATH: install RELION (or load its module), or use rounds = 1")
    return path


class RelionReconstructor:
    """A :class:`csrefine.rounds.Reconstructor` calling relion_reconstruct.

    out_dir : the job's output directory (the working directory is made inside it);
    base_dir : the RELION project directory (stack paths in the STAR are relative to it);
    threads : ``--j`` (2 or more: both halves at once); keep_maps : keep the rebuilt maps as
    outputs.
    """

    def __init__(self, out_dir, base_dir, threads: int, keep_maps: bool):
        self.executable = require_reconstruct()
        self.out_dir, self.base_dir = Path(out_dir), Path(base_dir)
        self.threads, self.keep_maps = max(int(threads), 1), keep_maps
        self.processes = 2 if self.threads >= 2 else 1
        self.work: Path | None = None

    # -- the cost, stated before the first round ------------------------------------------
    def estimate(self, inputs) -> RoundCost:
        """Memory and time of one rebuild from the box size and particle count."""
        box = max(g.box_size for g in inputs.groups.values())
        n = len(inputs.particles)
        padded = float(RECONSTRUCT_PAD * box) ** 3
        per_half = (n / 2) * box * box * SECONDS_PER_IMAGE_PIXEL + padded * SECONDS_PER_PADDED_VOXEL
        return RoundCost(memory_bytes=self.processes * padded * BYTES_PER_PADDED_VOXEL,
                         seconds=per_half * (2 / self.processes), processes=self.processes,
                         tool=RECONSTRUCT)

    # -- one rebuild ------------------------------------------------------------------------
    def __call__(self, round_number: int, inputs, refinement, progress, should_abort) -> HalfMaps:
        t0 = time.monotonic()
        if self.work is None:
            self.work = Path(tempfile.mkdtemp(prefix=ROUNDS_WORK_PREFIX, dir=self.out_dir))
        star_path = self.work / f"round{round_number}_particles.star"
        write_refined_star(star_path, inputs.source, refinement)
        maps = [self.work / round_map_name(round_number, h) for h in (1, 2)]
        self._reconstruct(star_path, maps, round_number, progress, should_abort)
        (h1, h2), _, px = read_half_maps(maps[0], maps[1])
        if h1.shape != inputs.half_maps[0].shape:
            raise InputError(f"{RECONSTRUCT} made maps of shape {h1.shape}, the given half maps "
                             f"have {inputs.half_maps[0].shape}: rounds need maps of the "
                             f"particles' box (one box size for all optics groups)")
        names = tuple(str(self.out_dir / m.name) if self.keep_maps
                      else f"{m.name} (removed after the run)" for m in maps)
        files = {m.name: m for m in maps} if self.keep_maps else {}
        seconds = time.monotonic() - t0
        progress(f"round {round_number}: half maps rebuilt in {seconds:.0f} s")
        return HalfMaps(h1, h2, px or None, names, seconds, files)

    def _command(self, star_path: Path, map_path: Path, half: int) -> list[str]:
        args = [self.executable, "--i", str(star_path.resolve()), "--o", str(map_path.resolve()),
                "--ctf", "--subset", str(half)]
        per_process = self.threads // self.processes
        if per_process > 1 and self.takes_threads:
            args += ["--j", str(per_process)]
        return args

    @cached_property
    def takes_threads(self) -> bool:
        """Whether this relion_reconstruct accepts ``--j`` (RELION 3.1's does not)."""
        try:
            text = subprocess.run([self.executable, "--help"], capture_output=True, text=True,
                                  timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return False
        return any(line.strip().startswith("--j ") for line in text.splitlines())

    def _reconstruct(self, star_path: Path, maps: list[Path], round_number: int, progress,
                     should_abort) -> None:
        """Both halves (at once with two processes), polling for an abort request."""
        pending = [(h, maps[h - 1]) for h in (1, 2)]
        while pending:
            batch, pending = pending[:self.processes], pending[self.processes:]
            running = []
            for half, map_path in batch:
                log = open(map_path.with_suffix(".log"), "w")
                running.append((half, log, subprocess.Popen(
                    self._command(star_path, map_path, half), cwd=self.base_dir, stdout=log,
                    stderr=subprocess.STDOUT)))
                progress(f"round {round_number}: {RECONSTRUCT} --subset {half}")
            try:
                while any(proc.poll() is None for _, _, proc in running):
                    check_abort(should_abort)
                    time.sleep(POLL_S)
            finally:
                for _, log, proc in running:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    log.close()
            for half, _, proc in running:
                if proc.returncode != 0:
                    tail = maps[half - 1].with_suffix(".log").read_text(errors="replace")
                    tail = " | ".join(tail.strip().splitlines()[-3:])
                    raise InputError(f"{RECONSTRUCT} failed for half {half} of round "
                                     f"{round_number} (exit status {proc.returncode}): {tail}")

    def cleanup(self) -> None:
        """Remove the working directory (what was kept has been moved out of it)."""
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


def round_map_names(rounds: int) -> tuple[str, ...]:
    """Every file name a run of ``rounds`` rounds may write as a rebuilt half map."""
    return tuple(round_map_name(r, h) for r in range(2, rounds + 1) for h in (1, 2))


def kept_map_files(result: RunResult) -> dict:
    """The rebuilt half maps kept as outputs: {file name: writer moving it into place}."""
    if result.rounds is None:
        return {}
    return {name: (lambda path, _, source=source: os.replace(source, path))
            for maps in result.rounds.maps for name, source in maps.files.items()}
