"""What the benchmark scripts share: the repository's path, the atomic model, a logger, the
backend warm-up. The scripts use the installed package (``pip install .`` or ``-e .``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from csrefine.atomic_map import PACKAGED_MODEL

REPO = Path(__file__).resolve().parents[1]
# tests/relion_tools.py (RELION's programs for simulations and comparisons) serves the benchmarks
# too
sys.path.append(str(REPO / "tests"))

#: PDB 1BD2, shipped with the package (public-domain PDB data).
MODEL = PACKAGED_MODEL


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def repo_env() -> dict:
    """The environment for the programs a benchmark starts (csrefine as installed)."""
    return dict(os.environ)


def warm_up(device: str) -> None:
    """Load the backend of ``device`` once in a separate process (cuda: initialise CUDA and
    compile its kernel into CuPy's cache), so that the timed runs start as a user's later runs do."""
    code = f"from csrefine.pipeline import load_backend; load_backend({device!r})"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", code], env=repo_env(), check=True)
    log(f"warm-up {device} (backend load) {time.monotonic() - t0:.1f} s")


def speed_probe() -> float:
    """Seconds this machine takes for a fixed single-threaded Python loop (``sum(range(10**7))``,
    best of 3), printed beside timings: on a shared VM the same work runs 30-50% slower in some
    hours than in others, and this tells which kind of hour a figure comes from."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        sum(range(10**7))
        best = min(best, time.perf_counter() - t0)
    return best


def z_summary(values) -> str:
    """Mean (± its standard error), rms and the 1-sigma count of z = (Cs - truth) / sigma: 0, 1
    and 68% for an unbiased estimate with an honest sigma."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    return (f"z mean {v.mean():+.2f} ± {1 / np.sqrt(v.size):.2f}, rms {np.sqrt(np.mean(v**2)):.2f}, "
            f"within 1 sigma {np.sum(np.abs(v) <= 1)}/{v.size}")
