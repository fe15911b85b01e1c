"""The one job shell: what every entry point (``csrefine refine``, ``csrefine-relion``,
``csrefine-cryosparc``) does around :func:`csrefine.run.run_refinement`.

An entry point parses its command line into a :class:`Job` (its options, validated once, its
loader, its destination and, for rounds, its reconstructor) and hands it to :func:`run_job`,
which opens the destination, runs the refinement, records the result in the history database
when asked to, closes the destination with the outcome (RELION's markers, the cryoSPARC job's
status) and maps the outcome to the exit status, once for all of them:

=======  =====================================================================
status   meaning
=======  =====================================================================
0        refined and written (a group may still be left unrefined, with its reason)
1        an unexpected failure (a bug): the traceback on stderr
2        bad input, options or outputs: one line on stderr naming the file, column or value
3        aborted by the user (RELION_JOB_ABORT_NOW)
128 + N  stopped by signal N (130 SIGINT, 143 SIGTERM)
=======  =====================================================================
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Callable

from .errors import AbortRequested, InputError, Interrupted, quiet_library_warnings
from .history import INSTRUMENT_ENV, record_if_requested
from .history.db import HISTORY_DB_ENV
from .options import RefineOptions, add_option_arguments, bare_flag, flag
from .results import RefinementInputs, RunResult
from .rounds import Reconstructor
from .run import Destination, run_refinement
from .signals import interrupts_raise

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_ABORTED, SIGNAL_STATUS_BASE = 0, 1, 2, 3, 128


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr, with exit status 2 (the usage is in
    ``--help``)."""

    def error(self, message):
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass
class HistoryRequest:
    """Record the finished run in the Cs history (:mod:`csrefine.history`): the instrument
    (None: ``$CSREFINE_INSTRUMENT``; neither: nothing is recorded), its magnification label and
    the database URL (None: the default)."""

    instrument: str | None = None
    magnification: str | None = None
    history_db: str | None = None


def history_request(args: argparse.Namespace) -> HistoryRequest:
    """The history request of parsed arguments (:func:`add_job_arguments`)."""
    return HistoryRequest(args.instrument, args.magnification, args.history_db)


def add_job_arguments(parser: argparse.ArgumentParser, style: str = "cli",
                      exclude: tuple[str, ...] = ()) -> None:
    """The refinement options (:func:`csrefine.options.add_option_arguments`, without
    ``exclude``) and the history's ``--instrument``, ``--magnification`` and ``--history-db``,
    named in ``style`` ("cli": dashes; "relion": underscores, each accepting a bare flag)."""
    add_option_arguments(parser, style, exclude)
    parser.add_argument("--instrument", metavar="NAME", default=None, **bare_flag(style),
                        help=f"record the result in the Cs history under this instrument name "
                             f"(default: ${INSTRUMENT_ENV}; neither: not recorded)")
    parser.add_argument("--magnification", metavar="LABEL", default=None, **bare_flag(style),
                        help="magnification / nominal pixel-size label for the history "
                             "(default: each optics group's pixel size)")
    parser.add_argument(flag("history_db", style), dest="history_db", metavar="URL", default=None,
                        **bare_flag(style),
                        help=f"SQLAlchemy URL of the history database (default: "
                             f"${HISTORY_DB_ENV}, else ~/.local/share/csrefine/history.sqlite)")


@dataclass
class Job:
    """One refinement as an entry point sets it up."""

    options: RefineOptions
    load: Callable[[], RefinementInputs]
    destination: Destination
    reconstruct: Reconstructor | None = None
    should_abort: Callable[[], bool] = lambda: False
    history: HistoryRequest | None = None


def say(prog: str, text: str) -> None:
    """One line on stderr, prefixed with the program's name."""
    print(f"{prog}: {text}", file=sys.stderr, flush=True)


def run_guarded(prog: str, action: Callable[[], int], *, stopped: str = "",
                expected: tuple[type[Exception], ...] = (InputError,)) -> int:
    """Run ``action`` (SIGTERM, SIGINT and SIGHUP raise Interrupted) and return its exit status,
    or the status of what stopped it (see the module docstring), said in one line on stderr:
    ``stopped`` follows a signal's or an abort's line; ``expected`` are the errors of bad input
    (status 2); any other exception is a bug (its traceback, status 1). A reader of stdout that
    went away (BrokenPipeError) is left to :func:`console_exit`."""
    with interrupts_raise(), quiet_library_warnings():
        try:
            return action()
        except Interrupted as exc:
            say(prog, f"{exc}{stopped}")
            return SIGNAL_STATUS_BASE + exc.signum
        except AbortRequested:
            say(prog, f"aborted by the user{stopped}")
            return EXIT_ABORTED
        except BrokenPipeError:
            raise
        except expected as exc:
            say(prog, f"error: {exc}")
            return EXIT_INPUT
        except Exception:  # a bug: the traceback says where
            traceback.print_exc()
            return EXIT_FAILED


def run_job(prog: str, make_job: Callable[[], Job]) -> int:
    """Set up the job (``make_job`` parses the command line and validates the options), run
    it, and return the exit status (see the module docstring). Nothing but the outputs of a
    successful run is left behind; SIGTERM, SIGINT and SIGHUP stop the run cleanly."""

    def run() -> int:
        execute(make_job())
        return EXIT_OK

    return run_guarded(prog, run, stopped="; nothing was written")


def execute(job: Job) -> RunResult:
    """Open the job's destination, run the refinement, record it in the history if asked, and
    close the destination with the outcome; returns the run's result or raises."""
    destination = job.destination
    destination.open()
    try:
        result = run_refinement(job.load, job.options, destination, job.should_abort,
                                job.reconstruct)
        if job.history is not None:
            record_if_requested(result.report, instrument=job.history.instrument,
                                magnification=job.history.magnification,
                                history_db=job.history.history_db,
                                source=destination.history_source, warn=destination.progress)
    except BaseException as exc:
        destination.close(exc)
        raise
    destination.close(None)
    return result


#: Exit status when the reader of stdout went away (``| head``): 128 + SIGPIPE.
EXIT_BROKEN_PIPE = 141


def console_exit(main: Callable[[], int]) -> None:
    """A console script: run ``main`` and exit with its status. Output cut short by a closed
    pipe (``csrefine history show | head -1``) ends the script quietly.

    Before the (normal) exit, the garbage collector is told to leave the objects that exist
    then alone (``gc.freeze``): the interpreter's last collection at shutdown otherwise walks
    every object of numpy, scipy, matplotlib and SQLAlchemy, 0.5-0.7 s after a run on a
    2-core machine, 0.06 s with them frozen. atexit handlers and the modules' teardown run as
    usual."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        status = EXIT_BROKEN_PIPE
    gc.freeze()
    sys.exit(status)
