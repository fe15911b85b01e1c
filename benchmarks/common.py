"""What the benchmark scripts share: the repository on sys.path, the atomic model, a logger."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from csrefine.atomic_map import PACKAGED_MODEL  # noqa: E402

#: PDB 1BD2, shipped with the package (public-domain PDB data).
MODEL = PACKAGED_MODEL


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def repo_env() -> dict:
    """The environment with the repository first on PYTHONPATH (entries already there kept)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def warm_up(device: str) -> None:
    """Compile (or load from numba's on-disk cache) a backend's kernels outside the timed runs."""
    code = ("from csrefine.backends import resolve_backend, get_backend; "
            f"b = get_backend(resolve_backend({device!r})); "
            "getattr(b, 'warm_up', lambda: None)()")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", code], env=repo_env(), check=True)
    log(f"warm-up {device} (kernel compilation or cache load) {time.monotonic() - t0:.1f} s")
