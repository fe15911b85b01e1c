"""What the benchmark scripts share: the repository on sys.path, the atomic model, a logger."""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from plugin.example import PACKAGED_MODEL  # noqa: E402

#: PDB 1BD2, shipped with the package (public-domain PDB data).
MODEL = PACKAGED_MODEL


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)
