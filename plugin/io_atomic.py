"""Staged, atomic outputs: nothing appears under its final name until it is complete.

* :func:`atomic_output` — one file: written under a temporary name beside the target, renamed
  into place when the writer returns, removed if it raises.
* :func:`staging_directory` — a run's set of files: written into a hidden directory inside the
  output directory, moved into place together by :func:`commit` only when every file exists;
  the staging directory is removed on every exit (error, abort, signal turned into an
  exception).
* :func:`directory_lock` — one job per output directory: a lock file holding the PID, created
  exclusively, removed at the end; a lock left by a process that no longer exists is taken over.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError
from .signals import deferred

STAGING_PREFIX = ".csrefine-staging-"
LOCK_NAME = ".csrefine.lock"
#: Lock files this process holds (reentrant: an entry point may lock before the writer does).
_held_locks: dict[Path, int] = {}


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
        with deferred():  # a second signal must not cut the clean-up short
            shutil.rmtree(staging, ignore_errors=True)


def commit(staging, out_dir, names) -> None:
    """Move ``names`` from ``staging`` into ``out_dir`` (each an atomic rename). Raises
    FileNotFoundError before moving anything if one of them is missing."""
    staging, out_dir = Path(staging), Path(out_dir)
    missing = [n for n in names if not (staging / n).is_file()]
    if missing:
        raise FileNotFoundError(f"outputs not written: {', '.join(missing)}")
    # A signal arriving while the files move waits until the set is complete, and is then
    # dropped: the outputs are in place, the run has succeeded (what remains is printing).
    with deferred(raise_pending=False):
        for name in names:
            os.replace(staging / name, out_dir / name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _lock_owner(lock: Path) -> int | None:
    """The PID written in ``lock``, or None if it is unreadable or empty."""
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def acquire_lock(out_dir) -> Path:
    """Create ``out_dir/.csrefine.lock`` holding this process's PID (O_EXCL); a lock whose
    process is gone (or that names no PID) is taken over. Raises OutputError naming the other
    job's PID if one holds it. Reentrant within a process (released by the last release)."""
    lock = Path(out_dir) / LOCK_NAME
    key = Path(os.path.abspath(lock))
    if key in _held_locks:
        _held_locks[key] += 1
        return lock
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and owner != os.getpid() and _pid_alive(owner):
                raise OutputError(f"{out_dir}: another csrefine job (PID {owner}) is running in "
                                  f"this output directory ({LOCK_NAME}); wait for it or choose "
                                  f"another directory") from None
            lock.unlink(missing_ok=True)  # stale: its process has gone
            continue
        except OSError as exc:
            raise OutputError(f"{out_dir}: cannot create the lock file {LOCK_NAME} "
                              f"({exc.strerror})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        _held_locks[key] = 1
        return lock
    raise OutputError(f"{out_dir}: cannot take the lock {LOCK_NAME} (other jobs keep creating it)")


def release_lock(out_dir) -> None:
    """Undo one :func:`acquire_lock`; the file is removed by the last release."""
    lock = Path(out_dir) / LOCK_NAME
    key = Path(os.path.abspath(lock))
    if key not in _held_locks:
        return
    _held_locks[key] -= 1
    if _held_locks[key] == 0:
        _remove_lock(key, lock)


def _remove_lock(key: Path, lock: Path) -> None:
    with deferred(raise_pending=False):  # the run is ending: a signal must not leave the lock
        del _held_locks[key]
        if _lock_owner(lock) == os.getpid():
            try:
                lock.unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise


@contextmanager
def directory_lock(out_dir):
    """Hold ``out_dir``'s lock within the block (see :func:`acquire_lock`)."""
    acquire_lock(out_dir)
    try:
        yield
    finally:
        release_lock(out_dir)
