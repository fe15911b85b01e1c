"""Staged, atomic outputs: nothing appears under its final name until it is complete.

* :func:`atomic_output` — one file: written under a temporary name beside the target, renamed
  into place when the writer returns, removed if it raises.
* :func:`staging_directory` — a run's set of files: written into a hidden directory inside the
  output directory, moved into place together by :func:`commit` only when every file exists;
  the staging directory is removed on every exit (error, abort, signal turned into an
  exception).
* :func:`acquire_lock` / :func:`release_lock` — one job per output directory: a lock file
  holding the PID, the host and the process's start time, created exclusively, removed at the
  end; a lock left by a process that no longer exists (or whose PID now belongs to another
  process) is taken over, and :func:`clear_leftovers` then removes what that job left.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import OutputError
from .paths import ROUNDS_WORK_PREFIX
from .signals import deferred

STAGING_PREFIX = ".csrefine-staging-"
#: Working directories of a run inside its output directory (staging, rebuilt half maps).
LEFTOVER_PREFIXES = (STAGING_PREFIX, ROUNDS_WORK_PREFIX)
LOCK_NAME = ".csrefine.lock"


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
        tmp.unlink(missing_ok=True)


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


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: PID, host name, the process's start time (clock ticks since boot, from
    /proc; None where unknown) and when the lock was taken (ISO 8601)."""

    pid: int
    host: str
    start_ticks: int | None
    taken: str

    def text(self) -> str:
        return f"{self.pid} {self.host} {self.start_ticks or '-'} {self.taken}\n"

    @classmethod
    def parse(cls, text: str) -> "LockOwner | None":
        words = text.split()
        try:
            pid = int(words[0])
        except (IndexError, ValueError):
            return None
        host = words[1] if len(words) > 1 else ""
        ticks = int(words[2]) if len(words) > 2 and words[2].isdigit() else None
        return cls(pid, host, ticks, words[3] if len(words) > 3 else "")

    def describe(self) -> str:
        since = f", started {self.taken}" if self.taken else ""
        return f"PID {self.pid} on {self.host or 'an unknown host'}{since}"


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22), or None
    where /proc does not tell (another system) or the process does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may contain spaces: count from its closing parenthesis
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def current_owner() -> LockOwner:
    """This process as a lock owner."""
    return LockOwner(os.getpid(), socket.gethostname(), process_start_ticks(os.getpid()),
                     datetime.now().astimezone().isoformat(timespec="seconds"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def owner_is_running(owner: LockOwner) -> bool:
    """Whether the job that took the lock may still be running. On this host: its PID exists
    and (where /proc tells) the process with that PID started when the lock's owner did, so a
    PID reused by another process does not count. On another host nothing can be checked: it
    counts as running."""
    if owner.host and owner.host != socket.gethostname():
        return True
    if not _pid_alive(owner.pid):
        return False
    if owner.start_ticks is None:
        return True
    now = process_start_ticks(owner.pid)
    return now is None or now == owner.start_ticks


def acquire_lock(out_dir) -> Path:
    """Create ``out_dir/.csrefine.lock`` (O_EXCL) naming this process (:class:`LockOwner`).

    A lock whose job has ended (:func:`owner_is_running`), or that names no PID, is taken over.
    Raises OutputError naming the other job if one holds it.
    """
    lock = Path(out_dir) / LOCK_NAME
    me = current_owner()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and owner_is_running(owner):
                raise OutputError(f"{out_dir}: another csrefine job ({owner.describe()}) holds "
                                  f"this output directory ({LOCK_NAME}); wait for it, choose "
                                  f"another directory, or remove {LOCK_NAME} if that job is "
                                  f"gone") from None
            lock.unlink(missing_ok=True)  # stale: its job has ended
            continue
        except OSError as exc:
            raise OutputError(f"{out_dir}: cannot create the lock file {LOCK_NAME} "
                              f"({exc.strerror})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(me.text())
        return lock
    raise OutputError(f"{out_dir}: cannot take the lock {LOCK_NAME} (other jobs keep creating it)")


def _lock_owner(lock: Path) -> LockOwner | None:
    try:
        return LockOwner.parse(lock.read_text())
    except OSError:
        return None


def release_lock(out_dir) -> None:
    """Remove ``out_dir``'s lock if this process holds it."""
    lock = Path(out_dir) / LOCK_NAME
    with deferred(raise_pending=False):  # the run is ending: a signal must not leave the lock
        owner = _lock_owner(lock)
        if owner is not None and owner.pid == os.getpid():
            lock.unlink(missing_ok=True)


def clear_leftovers(out_dir) -> None:
    """Remove the working directories a killed run left in ``out_dir`` (call with the lock
    held: no other run can be using them)."""
    for entry in Path(out_dir).iterdir():
        if entry.name.startswith(LEFTOVER_PREFIXES) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
