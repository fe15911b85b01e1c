"""Staged, atomic outputs: nothing appears under its final name until it is complete.

* :func:`atomic_output` — one file: written under a temporary name beside the target, renamed
  into place when the writer returns, removed if it raises.
* :func:`staging_directory` — a run's set of files: written into a hidden directory inside the
  output directory, moved into place together by :func:`commit` only when every file exists;
  the staging directory is removed on every exit (error, abort, signal turned into an
  exception).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

STAGING_PREFIX = ".csrefine-staging-"


@contextmanager
def atomic_output(path):
    """Yield a temporary path in ``path``'s directory; on success rename it to ``path``.

    If the body raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(data)


@contextmanager
def staging_directory(out_dir):
    """Yield a new hidden directory inside ``out_dir`` (same file system, so that
    :func:`commit` is a set of renames); it is removed with whatever it still holds on exit."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit(staging, out_dir, names) -> None:
    """Move ``names`` from ``staging`` into ``out_dir`` (each an atomic rename). Raises
    FileNotFoundError before moving anything if one of them is missing."""
    staging, out_dir = Path(staging), Path(out_dir)
    missing = [n for n in names if not (staging / n).is_file()]
    if missing:
        raise FileNotFoundError(f"outputs not written: {', '.join(missing)}")
    for name in names:
        os.replace(staging / name, out_dir / name)
