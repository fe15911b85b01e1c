"""The ``csrefine-relion`` command (standard library only; its console script is :func:`console`,
which calls :func:`main`).

RELION waits for a marker file in the job directory. This module imports the External job
(numpy, numba, mrcfile, ...) inside a ``try``, so that a broken installation still ends with
``RELION_JOB_EXIT_FAILURE`` and one line on stderr instead of a job shown as running for ever;
a signal during the imports ends with ``RELION_JOB_EXIT_ABORTED``.
:func:`csrefine.relion.external_job.main` is the job itself (also runnable as
``python -m csrefine.relion.external_job``).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
#: Exit status of a start-up failure (the job's own statuses are in external_job).
EXIT_STATUS_STARTUP = 1


def out_dir_guess(argv) -> Path | None:
    """The job directory given with ``--o DIR`` or ``--o=DIR``, if any."""
    for i, arg in enumerate(argv):
        if arg == "--o" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--o="):
            return Path(arg[4:])
    return None


def write_marker(argv, name: str) -> None:
    """Touch ``name`` in the job directory named by ``argv``, if it can be (RELION has created
    the directory; nothing is done where it is unusable)."""
    out = out_dir_guess(argv)
    if out is None:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).touch()
    except OSError:
        pass


def _stop(signum, frame):
    raise KeyboardInterrupt(signum)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        from .external_job import main as job_main
    except KeyboardInterrupt:
        print("csrefine-relion: interrupted while starting", file=sys.stderr, flush=True)
        write_marker(argv, EXIT_ABORTED)
        return EXIT_STATUS_STARTUP
    except Exception as exc:  # a broken installation: still tell RELION's pipeliner
        print(f"csrefine-relion: error: cannot start ({type(exc).__name__}: {exc})",
              file=sys.stderr, flush=True)
        write_marker(argv, EXIT_FAILURE)
        return EXIT_STATUS_STARTUP
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return job_main(argv)


def console():
    """The ``csrefine-relion`` console script: :func:`main`, then exit without the interpreter's
    teardown (:mod:`csrefine.console`)."""
    from ..console import run as run_console

    run_console(main)


if __name__ == "__main__":
    console()
