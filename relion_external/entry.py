"""The ``csrefine-relion`` console script (standard library only).

RELION's pipeliner waits for a marker file in the job directory. The External job
(:mod:`csrefine.relion.external_job`) needs numpy, scipy, mrcfile and the compiled kernel; this
module imports it inside a ``try``, so that a broken installation still ends with
``RELION_JOB_EXIT_FAILURE`` in the job's own directory and one line on stderr, instead of a job
shown as running for ever.
"""

from __future__ import annotations

import sys

from .nodes import mark_failed_if_ours

#: Exit status of a start-up failure (the job's own statuses are in csrefine.job).
EXIT_STATUS_STARTUP = 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        from .external_job import main as job_main
    except Exception as exc:  # a broken installation: still tell RELION's pipeliner
        print(f"csrefine-relion: error: cannot start ({type(exc).__name__}: {exc})",
              file=sys.stderr, flush=True)
        mark_failed_if_ours(argv)
        return EXIT_STATUS_STARTUP
    return job_main(argv)


def console():
    """The ``csrefine-relion`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
