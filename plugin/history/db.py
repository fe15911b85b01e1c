"""The history database: schema, connection, recording and loading (SQLAlchemy 2.x Core).

One schema serves SQLite (the default: one file in the user's data directory) and PostgreSQL (a
facility's shared server, ``postgresql+psycopg://user:password@host/db``; ``pip install
'csrefine[postgres]'``). The tool creates and migrates the schema itself: the table
``schema_version`` holds one row, the version the tables follow; :data:`MIGRATIONS` brings a
database from each version to the next.

Tables: ``runs``, one csrefine run (one csrefine.json), unique by ``content_hash`` (SHA-256 of
the content as canonical JSON: recording the same result twice is a no-op); ``groups``, one row
per optics group of a run (csrefine.json's per-group numbers).

Concurrent recorders: SQLite runs in WAL mode with a busy timeout, and a write that still meets
"database is locked" is retried; a race on the same result ends in the unique key, which is the
no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

#: Environment variable with a SQLAlchemy URL of the history database.
HISTORY_DB_ENV = "CSREFINE_HISTORY_DB"
#: The schema version this csrefine writes and reads.
SCHEMA_VERSION = 2
#: SQLite waits this long for another writer before "database is locked", s.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: Connection timeout for network databases, s (an unreachable server is a warning, quickly).
CONNECT_TIMEOUT_S = 5
#: Attempts of a write that meets a locked database, and the first pause between them, s.
WRITE_ATTEMPTS = 8
RETRY_PAUSE_S = 0.05
#: Attempts to create or migrate the schema while other processes do the same.
SCHEMA_ATTEMPTS = 5


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


metadata = sa.MetaData()

schema_version_table = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
)

runs_table = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("instrument", sa.String(200), nullable=False, index=True),
    sa.Column("magnification", sa.String(200)),
    sa.Column("voltage_kv", sa.Float),
    sa.Column("run_date", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("inputs_json", sa.Text),
    sa.Column("csrefine_version", sa.String(50)),
    sa.Column("pixel_size_calibrated_A", sa.Float),
    sa.Column("pixel_size_sigma_A", sa.Float),
    sa.Column("map_pixel_size_A", sa.Float),  # the calibration's nominal (schema version 2)
)

groups_table = sa.Table(
    "groups", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("optics_group", sa.Integer, nullable=False),
    sa.Column("name", sa.String(200)),
    sa.Column("n_particles", sa.Integer),
    sa.Column("refined", sa.Boolean, nullable=False),
    sa.Column("voltage_kv", sa.Float),
    sa.Column("cs_nominal_mm", sa.Float),
    sa.Column("cs_refined_mm", sa.Float),
    sa.Column("cs_sigma_mm", sa.Float),
    sa.Column("cs_subsets_json", sa.Text),
    sa.Column("defocus_offset_A", sa.Float),
    sa.Column("pixel_size_A", sa.Float),
    sa.Column("pixel_size_if_cs_nominal_A", sa.Float),
    sa.Column("cs_at_calibrated_pixel_mm", sa.Float),
    sa.Column("verdict", sa.Text),
    sa.UniqueConstraint("run_id", "optics_group", name="uq_group_per_run"),
)


# ------------------------------------------------------------------------------ connection
def database_url(url: str | None = None, create: bool = True) -> str:
    """The URL to use: ``url`` (``--history-db``), else ``$CSREFINE_HISTORY_DB``, else the SQLite
    file ``$XDG_DATA_HOME/csrefine/history.sqlite`` (``~/.local/share/...``; its directory is
    created when ``create``)."""
    chosen = url or os.environ.get(HISTORY_DB_ENV)
    if chosen:
        return chosen
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    path = Path(data_home) / "csrefine" / "history.sqlite"
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def missing_sqlite_file(url: str | None = None) -> Path | None:
    """The SQLite file a read would have to create (nothing recorded there yet), or None."""
    sa_url = sa.make_url(database_url(url, create=False))
    if sa_url.get_backend_name() != "sqlite" or not sa_url.database \
            or sa_url.database == ":memory:":
        return None
    path = Path(sa_url.database)
    return None if path.exists() else path


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def open_engine(url: str | None = None) -> sa.Engine:
    """An engine for the history database, its schema created or migrated to
    :data:`SCHEMA_VERSION`. Raises HistoryError if it cannot be reached or used."""
    resolved = database_url(url)
    try:
        sa_url = sa.make_url(resolved)
    except sa.exc.ArgumentError as exc:
        raise HistoryError(f"history database URL {resolved!r} is not a SQLAlchemy URL") from exc
    backend = sa_url.get_backend_name()
    connect_args = {"sqlite": {"timeout": SQLITE_BUSY_TIMEOUT_S},
                    "postgresql": {"connect_timeout": CONNECT_TIMEOUT_S}}.get(backend, {})
    try:
        engine = sa.create_engine(sa_url, connect_args=connect_args)
    except Exception as exc:  # e.g. the driver of this URL is not installed
        raise HistoryError(f"history database {_safe(sa_url)}: {exc}") from exc
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_on_connect)
    try:
        _retrying(lambda: ensure_schema(engine))
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise HistoryError(f"history database {_safe(sa_url)} cannot be used: "
                           f"{_first_line(exc)}") from exc
    except HistoryError:
        engine.dispose()
        raise
    return engine


def _safe(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _is_locked(exc: OperationalError) -> bool:
    return "locked" in str(exc).lower() or "busy" in str(exc).lower()


def _retrying(action):
    """Run ``action()``, retrying (up to :data:`WRITE_ATTEMPTS` times, with growing pauses)
    while SQLite says the database is locked; other errors propagate."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            return action()
        except OperationalError as exc:
            if not _is_locked(exc) or attempt == WRITE_ATTEMPTS - 1:
                raise
            time.sleep(RETRY_PAUSE_S * 2**attempt)


# ------------------------------------------------------------------------------ schema
def _create_version_1(connection: sa.Connection) -> None:
    metadata.create_all(connection, tables=[runs_table, groups_table])  # with version 2's column


def _add_map_pixel_size(connection: sa.Connection) -> None:
    """Version 2: ``runs.map_pixel_size_A``, the map's pixel size that a calibration corrects
    (a group's own pixel size may differ); already there in tables created as version 2."""
    column = runs_table.c.map_pixel_size_A
    if column.name in {c["name"] for c in sa.inspect(connection).get_columns("runs")}:
        return
    quote = connection.dialect.identifier_preparer.quote
    connection.execute(sa.text(f"ALTER TABLE runs ADD COLUMN {quote(column.name)} "
                               f"{column.type.compile(connection.dialect)}"))


#: version -> function bringing the tables from version - 1 to ``version`` (0: empty database).
MIGRATIONS = {1: _create_version_1, 2: _add_map_pixel_size}


def stored_version(connection: sa.Connection) -> int:
    """The schema version recorded in the database (0: none yet)."""
    value = connection.execute(sa.select(sa.func.max(schema_version_table.c.version))).scalar()
    return int(value or 0)


def ensure_schema(engine: sa.Engine) -> None:
    """Create or migrate the tables to :data:`SCHEMA_VERSION`.

    Each migration runs in its own transaction together with its version row; a second process
    migrating at the same moment fails on that row (or on an existing table) and finds the
    work done when it looks again.
    """
    for _ in range(SCHEMA_ATTEMPTS):
        try:
            with engine.begin() as connection:
                metadata.create_all(connection, tables=[schema_version_table])
            with engine.begin() as connection:
                version = stored_version(connection)
                if version > SCHEMA_VERSION:
                    raise HistoryError(f"the history database has schema version {version}, newer "
                                       f"than this csrefine's ({SCHEMA_VERSION}): update csrefine")
                while version < SCHEMA_VERSION:
                    version += 1
                    MIGRATIONS[version](connection)
                    connection.execute(sa.insert(schema_version_table).values(version=version))
            return
        except (IntegrityError, sa.exc.ProgrammingError, OperationalError) as exc:
            # SQLite reports a table created meanwhile by another process as an OperationalError
            if isinstance(exc, OperationalError) and not (
                    "already exists" in str(exc).lower() or _is_locked(exc)):
                raise
            time.sleep(RETRY_PAUSE_S)  # another process migrated meanwhile; look again


# ------------------------------------------------------------------------------ recording
def content_hash(report: dict) -> str:
    """SHA-256 of a csrefine.json content as canonical JSON (sorted keys, no spaces), so that the
    same result read back from its file or taken from memory has the same hash."""
    try:
        canonical = json.dumps(json.loads(json.dumps(report, default=float)), sort_keys=True,
                               separators=(",", ":"), allow_nan=False)
    except ValueError:  # csrefine writes no such number; an edited file may hold one
        raise ValueError("it holds a number that is not finite (NaN or Infinity)") from None
    return hashlib.sha256(canonical.encode()).hexdigest()


def _float(value):
    return None if value is None else float(value)


#: The ``groups`` columns copied from a csrefine.json group as floats.
_FLOAT_COLUMNS = ("voltage_kv", "cs_nominal_mm", "cs_refined_mm", "cs_sigma_mm", "defocus_offset_A",
                  "pixel_size_A", "pixel_size_if_cs_nominal_A", "cs_at_calibrated_pixel_mm")


def group_rows(report: dict) -> list[dict]:
    """``groups`` rows (without run_id) from a csrefine.json content."""
    return [{"optics_group": int(g["optics_group"]), "name": g.get("name"),
             "n_particles": g.get("n_particles"), "refined": bool(g.get("refined")),
             **{column: _float(g.get(column)) for column in _FLOAT_COLUMNS},
             "cs_subsets_json": json.dumps(g.get("cs_subsets_mm") or []), "verdict": g.get("verdict")}
            for g in report.get("groups", [])]


def run_row(report: dict, labels: RunLabels) -> dict:
    """The ``runs`` row of a csrefine.json content under ``labels``."""
    voltages = [g.get("voltage_kv") for g in report.get("groups", []) if g.get("voltage_kv")]
    now = datetime.now(timezone.utc)
    return {
        "content_hash": content_hash(report), "instrument": labels.instrument,
        "magnification": labels.magnification,
        "voltage_kv": _float(voltages[0]) if voltages else None,
        "run_date": labels.run_date or now, "recorded_at": now, "source": labels.source,
        "inputs_json": json.dumps(report.get("inputs") or {}, default=str),
        "csrefine_version": report.get("csrefine_version"),
        "pixel_size_calibrated_A": _float(report.get("pixel_size_calibrated_A")),
        "pixel_size_sigma_A": _float(report.get("pixel_size_sigma_A")),
        "map_pixel_size_A": _float(report.get("map_pixel_size_A")),
    }


def record_report(engine: sa.Engine, report: dict, labels: RunLabels) -> bool:
    """Record one csrefine.json content; True if it was new, False if already recorded (the
    unique content hash: a repeat, or another recorder that won a race, is a no-op)."""
    if not labels.instrument or not labels.instrument.strip():
        raise ValueError("an instrument name is required to record a run")
    run = run_row(report, labels)
    groups = group_rows(report)

    def insert() -> bool:
        try:
            with engine.begin() as connection:
                run_id = connection.execute(
                    sa.insert(runs_table).values(**run).returning(runs_table.c.id)).scalar_one()
                if groups:
                    connection.execute(sa.insert(groups_table),
                                       [{**g, "run_id": run_id} for g in groups])
            return True
        except IntegrityError:
            return False

    return bool(_retrying(insert))


# ------------------------------------------------------------------------------ loading
@dataclass(frozen=True)
class GroupRecord:
    """One optics group of one recorded run, joined with its run (units in the names)."""

    run_id: int
    instrument: str
    magnification: str | None
    run_date: datetime
    source: str | None
    content_hash: str
    optics_group: int
    n_particles: int | None
    refined: bool
    voltage_kv: float | None
    cs_nominal_mm: float | None
    cs_refined_mm: float | None
    cs_sigma_mm: float | None
    pixel_size_A: float | None
    cs_at_calibrated_pixel_mm: float | None
    verdict: str | None
    pixel_size_calibrated_A: float | None
    pixel_size_sigma_A: float | None
    map_pixel_size_A: float | None

    @property
    def magnification_label(self) -> str:
        """The user's magnification label, else the nominal pixel size (e.g. '1.600 A/px')."""
        if self.magnification:
            return self.magnification
        return f"{self.pixel_size_A:.3f} A/px" if self.pixel_size_A else "unknown"


#: ``groups`` columns recorded for completeness that the summary and the plot do not read.
_UNREAD_GROUP_COLUMNS = ("id", "run_id", "name", "cs_subsets_json", "defocus_offset_A",
                         "pixel_size_if_cs_nominal_A")


def load_groups(engine: sa.Engine, instrument: str | None = None) -> list[GroupRecord]:
    """Every recorded optics group (of ``instrument`` if given), oldest run first."""
    r, g = runs_table, groups_table
    query = (sa.select(r.c.id.label("run_id"), r.c.instrument, r.c.magnification, r.c.run_date,
                       r.c.source, r.c.content_hash, r.c.pixel_size_calibrated_A, r.c.pixel_size_sigma_A,
                       r.c.map_pixel_size_A,
                       *(c for c in g.c if c.name not in _UNREAD_GROUP_COLUMNS))
             .join(g, g.c.run_id == r.c.id)
             .order_by(r.c.run_date, r.c.id, g.c.optics_group))
    if instrument is not None:
        query = query.where(r.c.instrument == instrument)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [_group_record(dict(row)) for row in rows]


def _group_record(values: dict) -> GroupRecord:
    """A :class:`GroupRecord` from a row of :func:`load_groups`' query."""
    values["refined"] = bool(values["refined"])
    if values["run_date"].tzinfo is None:  # SQLite returns naive datetimes, stored in UTC
        values["run_date"] = values["run_date"].replace(tzinfo=timezone.utc)
    return GroupRecord(**values)

