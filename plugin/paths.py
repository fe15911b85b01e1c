"""Input and output paths checked before any heavy work, each failure one line naming the path.

* :func:`check_input_file` — an input exists, is a regular file (not a directory, not a device
  such as /dev/zero) and is readable.
* :func:`check_path_text` — a path without control characters.
* :func:`make_output_directory` — create the output directory (parents too) or say why not
  (a parent is a regular file, a symbolic-link loop, permission, a name too long), and probe
  that it is writable by creating and removing a file; nothing it created is left on failure.
* :func:`check_free_space` — enough free space for the outputs.

Also the names of the files and working directories csrefine puts into an output directory.
Standard library only: :mod:`csrefine.relion.nodes` imports it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import InputError, OutputError

#: The report files every run writes into its output directory.
REPORT_JSON = "csrefine.json"
REPORT_PDF = "logfile.pdf"
#: Prefix of the working directory in which rounds rebuild the half maps (inside the output
#: directory; removed at the end of the run, or by the next run if the job was killed).
ROUNDS_WORK_PREFIX = ".csrefine-rounds-"
#: Room for csrefine.json, logfile.pdf and the pipeline files beside the particle file, in bytes.
OUTPUT_MARGIN_BYTES = 4 * 1024 * 1024


def check_input_file(path, what: str) -> Path:
    """``path`` as a Path if it is a readable regular file, else InputError naming it."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(f"{path}: {what} is a broken symbolic link") from None
        raise InputError(f"{path}: {what} not found") from None
    except OSError as exc:  # ELOOP, ENOTDIR, EACCES on a parent
        raise InputError(f"{path}: {what} cannot be opened ({_reason(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: {what} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: {what} is not a regular file (a device, pipe or socket)")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: {what} is not readable (permission denied)")
    return path


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a loop of symbolic links"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a directory"
    return exc.strerror or str(exc)


def check_path_text(path, what: str) -> str:
    """``path`` as text if it holds no control character (a newline, a tab, ...), which would
    split the lines of the files that name it (RELION_OUTPUT_NODES.star, the pipeline); else
    InputError naming it."""
    text = str(path)
    bad = [c for c in text if ord(c) < 32 or ord(c) == 127]
    if bad:
        raise InputError(f"{text!r}: the {what} contains a control character ({bad[0]!r}); "
                         f"give a name without one")
    return text


def make_output_directory(path) -> list[Path]:
    """Create ``path`` (and its missing parents) if needed and check, with a probe file, that
    files can be created in it. Returns the directories created here, outermost first (so that
    a failed run can remove them with :func:`remove_created`). Raises OutputError naming the
    path and the reason, leaving nothing created behind."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not _is_dir(p)][::-1]
    created: list[Path] = []
    try:
        for directory in missing:
            directory.mkdir()
            created.append(directory)
    except FileExistsError:  # a file or a broken symbolic link is in the way
        remove_created(created)
        kind = "a broken or looping symbolic link" if directory.is_symlink() else "a file"
        where = "the output directory" if directory == path else f"its parent {directory}"
        raise OutputError(f"{path}: {where} is {kind}, not a directory") from None
    except OSError as exc:
        remove_created(created)
        raise OutputError(f"{path}: cannot create the output directory ({_reason(exc)})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".csrefine-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_created(created)
        raise OutputError(f"{path}: the output directory is not writable ({_reason(exc)})") from None
    return created


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long, a loop: creating it says why
        return False


def remove_created(directories: list[Path]) -> None:
    """Remove the directories :func:`make_output_directory` created, innermost first, where
    they are empty."""
    for directory in reversed(directories):
        try:
            directory.rmdir()
        except OSError:
            pass


def check_free_space(path, needed_bytes: int) -> None:
    """OutputError if the file system of ``path`` has less than ``needed_bytes`` free."""
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise OutputError(f"{path}: not enough free disk space for the outputs "
                          f"({free / 2**20:.1f} MiB free, about {needed_bytes / 2**20:.1f} MiB "
                          f"needed)")


def expected_output_bytes(particle_file) -> int:
    """The outputs' size estimate: the particle file's size (the updated copy) plus
    :data:`OUTPUT_MARGIN_BYTES` (stacks are never copied)."""
    try:
        size = Path(particle_file).stat().st_size
    except (OSError, TypeError):
        size = 0
    return size + OUTPUT_MARGIN_BYTES
