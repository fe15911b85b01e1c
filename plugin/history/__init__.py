"""A per-instrument history of refined Cs (and calibrated pixel size), in a database.

Is a microscope's refined Cs real, a pixel-size error or a one-off? One data set cannot tell;
many from the same instrument can. csrefine runs record their csrefine.json under an instrument
name (opt-in: ``--instrument NAME``, the External job's ``instrument`` parameter, or
``$CSREFINE_INSTRUMENT``), and ``csrefine history show`` / ``plot`` compare the data sets.

Submodules: :mod:`.db` (schema, SQLite/PostgreSQL through SQLAlchemy, recording, loading),
:mod:`.stats` (weighted mean, chi^2, outliers: pure functions), :mod:`.summary` (what ``show``
tells), :mod:`.plot` (the figure), :mod:`.commands` (``csrefine history ...``).

The entry points call :func:`record_if_requested` after a successful run, outside
:func:`csrefine.run.run_refinement`; it never raises: a database that cannot be reached is a
warning, never a failed refinement.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Callable

from ..paths import REPORT_JSON
from .db import RunLabels, open_engine, record_report

#: Environment variable naming the instrument (recording is opt-in: nothing without a name).
INSTRUMENT_ENV = "CSREFINE_INSTRUMENT"


def requested_instrument(instrument: str | None) -> str | None:
    """The instrument to record under: ``instrument`` if given, else ``$CSREFINE_INSTRUMENT``,
    else None (no recording). Blank names count as not given."""
    name = (instrument or os.environ.get(INSTRUMENT_ENV) or "").strip()
    return name or None


def report_path(item) -> Path:
    """The csrefine.json named by ``item``: that file, or the one in that directory."""
    path = Path(item)
    return path / REPORT_JSON if path.is_dir() else path


def record_if_requested(report: dict | str | Path, *, instrument: str | None = None,
                        magnification: str | None = None, history_db: str | None = None,
                        source: str | None = None, run_date: datetime | None = None,
                        warn: Callable[[str], None] | None = None) -> bool | None:
    """Record a finished run in the history database if an instrument is named.

    report : csrefine.json's content, or the path of a csrefine.json or of its directory.
    instrument : the name (None: ``$CSREFINE_INSTRUMENT``; neither: nothing is recorded).
    magnification : optional magnification / nominal pixel-size label.
    history_db : SQLAlchemy URL (None: ``$CSREFINE_HISTORY_DB``, else the default SQLite file).
    warn : where a warning goes (default: stderr).

    Returns True (recorded), False (already recorded: a no-op) or None (not requested, or the
    database could not be used, which is a warning). Never raises.
    """
    warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
    name = requested_instrument(instrument)
    if name is None:
        return None
    where = ""
    try:
        if not isinstance(report, dict):
            path = report_path(report)
            where = f"{path}: "
            source = source or str(path.parent.resolve())
            report = json.loads(path.read_text())
        engine = open_engine(history_db)
        try:
            new = record_report(engine, report, RunLabels(name, magnification, run_date, source))
        finally:
            engine.dispose()
    except Exception as exc:  # the refinement has succeeded; the history must not fail it
        warn(f"WARNING: csrefine history: {where}the run was not recorded under {name!r}: {exc}")
        return None
    if not new:
        warn(f"csrefine history: this result was already recorded (instrument {name!r})")
    return new
