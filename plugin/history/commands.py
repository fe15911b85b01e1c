"""``csrefine history record | show | plot`` (core-side subcommands of the ``csrefine`` CLI)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..job import run_guarded
from . import INSTRUMENT_ENV, REPORT_JSON, record_if_requested, report_path, requested_instrument
from .db import HistoryError, load_groups, missing_sqlite_file, open_engine
from .plot import plot_panels
from .summary import build_panels, panel_text, panels_json


def add_history_command(subparsers) -> dict:
    """Add ``history`` with its sub-subcommands; returns {"history": function(args) -> int}."""
    h = subparsers.add_parser("history", help="per-instrument history of refined Cs",
                              description="Record csrefine results per instrument and compare "
                                          "them: is an instrument's Cs an outlier?")
    db_help = ("SQLAlchemy URL (default: $CSREFINE_HISTORY_DB, else "
               "~/.local/share/csrefine/history.sqlite)")
    h.add_argument("--history-db", metavar="URL", default=None, help=db_help)
    hs = h.add_subparsers(dest="history_command", required=True, metavar="ACTION")
    r = hs.add_parser("record", help="import past runs from their csrefine.json")
    r.add_argument("directories", nargs="+", metavar="DIR",
                   help="directories holding a csrefine.json (or csrefine.json files)")
    r.add_argument("--instrument", default=None,
                   help=f"instrument name (default: ${INSTRUMENT_ENV}; required)")
    r.add_argument("--magnification", default=None, metavar="LABEL",
                   help="magnification / nominal pixel-size label (default: the pixel size)")
    r.add_argument("--date", default=None, metavar="YYYY-MM-DD",
                   help="date of the data sets (default: the csrefine.json's modification time)")
    s = hs.add_parser("show", help="weighted mean Cs, scatter and outliers per instrument")
    s.add_argument("--instrument", default=None, help="only this instrument")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = hs.add_parser("plot", help="Cs per data set over time, one panel per instrument")
    p.add_argument("--out", required=True, help="output figure (.pdf or .png)")
    p.add_argument("--instrument", default=None, help="only this instrument")
    for action in (r, s, p):  # also after the action; not given there: the value given before
        action.add_argument("--history-db", metavar="URL", default=argparse.SUPPRESS, help=db_help)
    return {"history": run_history_command}


def run_history_command(args: argparse.Namespace) -> int:
    """Dispatch ``csrefine history ACTION``; 0 on success, 2 on a usage or database error."""
    action = {"record": _record, "show": _show, "plot": _plot}[args.history_command]
    return run_guarded("csrefine history", lambda: action(args), expected=(HistoryError, ValueError))


def _run_date(args, path: Path) -> datetime:
    if args.date:
        return datetime.fromisoformat(args.date).replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)


def _record(args) -> int:
    instrument = requested_instrument(args.instrument)
    if instrument is None:
        raise ValueError(f"give --instrument NAME (or set {INSTRUMENT_ENV})")
    open_engine(args.history_db).dispose()  # an unusable database is an error here
    failures = 0
    for item in args.directories:
        path = report_path(item)
        if not path.is_file():
            print(f"csrefine history: {item}: no {REPORT_JSON}", file=sys.stderr)
            failures += 1
            continue
        new = record_if_requested(path, instrument=instrument, magnification=args.magnification,
                                  history_db=args.history_db, run_date=_run_date(args, path))
        if new is None:
            failures += 1
        elif new:
            print(f"recorded {path} under {instrument!r}")
    return 2 if failures else 0


def _panels(args):
    """The recorded data sets, as panels; none (and no database file created) where nothing
    was ever recorded."""
    if missing_sqlite_file(args.history_db) is not None:
        return []
    engine = open_engine(args.history_db)
    try:
        return build_panels(load_groups(engine, args.instrument))
    finally:
        engine.dispose()


def _show(args) -> int:
    panels = _panels(args)
    if args.json:
        print(json.dumps(panels_json(panels), indent=2, default=str))
    elif not panels:
        print("nothing recorded" + (f" for {args.instrument!r}" if args.instrument else ""))
    else:
        print("\n\n".join(panel_text(p) for p in panels))
    return 0


def _plot(args) -> int:
    print(f"wrote {plot_panels(_panels(args), args.out)}")
    return 0
