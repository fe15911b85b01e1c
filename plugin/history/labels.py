"""What the history's callers name without opening a database (no SQLAlchemy import: the
``csrefine`` command line loads this module on every run)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

#: Environment variable with a SQLAlchemy URL of the history database.
HISTORY_DB_ENV = "CSREFINE_HISTORY_DB"


class HistoryError(Exception):
    """The history database cannot be used (unreachable, or a schema newer than this csrefine)."""


@dataclass(frozen=True)
class RunLabels:
    """What the user says about a run: the instrument, the magnification label (None: each
    group's nominal pixel size), the run's date (None: now) and where it came from."""

    instrument: str
    magnification: str | None = None
    run_date: datetime | None = None
    source: str | None = None
