"""The loops of a STAR file as columns, read in one pass with :mod:`.star_syntax`.

Only the columns asked for are kept; their values are held as text for :data:`CHUNK_ROWS` rows,
then the numeric ones are converted to float64: a million-row file never holds more texts than
that per numeric column (a value's text is ~60 bytes as a Python string, its number 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable

import numpy as np

from csrefine.errors import InputError, shown

from .star_syntax import DATA, END, LOOP, OTHER, ROW, STRAY, StarSyntaxError, star_lines, tokens, unquoted

#: Rows whose values are held as text before the numeric columns are converted.
CHUNK_ROWS = 65536

#: What to read of a loop, given its block name and column names: None (skip it) or
#: (the columns to keep, those of them to convert to numbers).
Chooser = Callable[[str, list], "tuple[tuple[str, ...], frozenset] | None"]


@dataclass
class Table:
    """A loop of a STAR file: its block, all its column names in file order, the kept columns
    (float64 arrays for the numeric ones, lists of text for the others) and, per numeric
    column, the (row, text) of its first value that is not a finite number."""

    block: str
    labels: tuple[str, ...]
    columns: dict = field(default_factory=dict)
    bad: dict = field(default_factory=dict)
    n_rows: int = 0

    def __contains__(self, column: str) -> bool:
        return column in self.columns

    def __getitem__(self, column: str):
        return self.columns[column]

    def __len__(self) -> int:
        return self.n_rows


def to_numbers(texts) -> tuple[np.ndarray, int]:
    """(float64 values, NaN where a text is no number; the first index whose value is not a
    finite number, or -1)."""
    try:
        values = np.array(texts, dtype=np.float64)
    except (ValueError, OverflowError):
        values = np.array([_number_or_nan(t) for t in texts], dtype=np.float64)
    finite = np.isfinite(values)
    return values, (-1 if finite.all() else int(np.flatnonzero(~finite)[0]))


def _number_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


class _LoopReader:
    """The kept columns of one loop, filled row by row."""

    def __init__(self, table: Table, keep, numeric, where: str):
        index = [table.labels.index(c) for c in keep if c in table.labels]
        self.table, self.numeric, self.where = table, numeric, where
        self.names = [table.labels[i] for i in index]
        self.take = (itemgetter(*index) if len(index) > 1  # itemgetter of one index: no tuple
                     else lambda values: tuple(values[i] for i in index))
        self.parts = {name: [] for name in self.names}
        self.pending: list[tuple] = []

    def add(self, number: int, text: str) -> None:
        try:
            values = tokens(text)
        except StarSyntaxError as exc:
            raise InputError(f"{self.where}: line {number}: {exc}") from None
        if len(values) != len(self.table.labels):
            raise InputError(f"{self.where}: line {number} of data_{self.table.block} has "
                             f"{len(values)} values for its {len(self.table.labels)} columns")
        self.pending.append(self.take(values))
        if len(self.pending) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        table = self.table
        for name, texts in zip(self.names, zip(*self.pending)):
            if name in self.numeric:
                values, bad = to_numbers(texts)
                if bad >= 0 and name not in table.bad:
                    table.bad[name] = (table.n_rows + bad, texts[bad])
                self.parts[name].append(values)
            else:
                self.parts[name].extend(texts)
        table.n_rows += len(self.pending)
        self.pending = []

    def finish(self) -> Table:
        self.flush()
        for name, parts in self.parts.items():
            self.table.columns[name] = ((np.concatenate(parts) if parts else np.zeros(0))
                                        if name in self.numeric else parts)
        return self.table


#: The reader of a loop whose first row has not been seen yet.
UNOPENED = object()


def read_tables(path, choose: Chooser, where: str | None = None):
    """The loops ``choose`` asks for, in one pass over the file; returns (tables by block name,
    the file's block names in order). A loop whose header has no rows is an empty table.
    InputError naming the file and line for a row with more or fewer values than its loop's
    columns, a quote that is not closed, a column named twice, text after the end of a kept
    loop, and a kept block that appears twice or has two loops."""
    where = where or str(path)
    tables: dict[str, Table] = {}
    blocks: list[str] = []
    loop, reader = None, None  # (line, block, labels) of the current loop_; its reader

    def close(loop, reader):
        if reader is UNOPENED:  # a loop without rows
            reader = _open(loop, choose, tables, blocks, where)
        if reader is not None:
            tables[loop[1]] = reader.finish()

    with open(path, "r", encoding="utf-8", errors="surrogateescape") as fh:
        for number, kind, block, labels, text in star_lines(fh):
            if kind == ROW:
                if reader is UNOPENED:  # the first row: the header is complete
                    reader = _open(loop, choose, tables, blocks, where)
                if reader is not None:
                    reader.add(number, text)
            elif kind in (DATA, LOOP, END):
                close(loop, reader)
                loop, reader = ((number, block, labels), UNOPENED) if kind == LOOP else (None, None)
                if kind == DATA:
                    blocks.append(block)
            elif kind == STRAY and block in tables:
                raise InputError(f"{where}: line {number}: text after the end of "
                                 f"data_{block}'s loop (a blank line ends a loop's rows)")
        close(loop, reader)
    return tables, blocks


def _open(loop, choose: Chooser, tables, blocks, where) -> _LoopReader | None:
    """The reader of the loop ``loop`` (line number, block, column names: complete), or None if
    it is not asked for."""
    number, block, labels = loop
    wanted = choose(block, labels)
    if wanted is None:
        return None
    if block in tables:
        twice = blocks.count(block) > 1
        raise InputError(f"{where}: data_{block} " + ("appears twice" if twice else
                         "has more than one loop") + f" (line {number})")
    twice = [name for i, name in enumerate(labels) if name in labels[:i]]
    if twice:
        raise InputError(f"{where}: data_{block} has the column _{twice[0]} twice (the loop "
                         f"of line {number})")
    return _LoopReader(Table(block, tuple(labels)), wanted[0], wanted[1], where)


def numeric_column(table: Table, column: str, where: str, default=None) -> np.ndarray:
    """A column as float64, or ``default`` for every row if absent (InputError if there is no
    default); InputError naming the file, column, row and value for a value that is not a
    finite number."""
    if column not in table:
        if default is None:
            raise InputError(f"{where}: data_{table.block} lacks _{column}")
        return np.full(len(table), float(default))
    data = table[column]
    if isinstance(data, list):
        values, row = to_numbers(data)
        bad = (row, data[row]) if row >= 0 else None
    else:
        values, bad = data, table.bad.get(column)
    if bad is not None:
        raise InputError(f"{where}: _{column} has a non-numeric or non-finite value "
                         f"{shown(bad[1])} in row {bad[0] + 1}")
    return values


def integer_column(table: Table, column: str, where: str) -> np.ndarray:
    """A column of whole numbers as int64; InputError naming the file, column, row and value
    for a fractional value (never truncated) or one of more than 15 digits."""
    values = numeric_column(table, column, where)
    fractional = (values != np.round(values)) | (np.abs(values) >= 1e15)
    if fractional.any():
        row = int(np.flatnonzero(fractional)[0])
        data = table[column]
        text = data[row] if isinstance(data, list) else f"{values[row]:g}"
        raise InputError(f"{where}: _{column} must be a whole number, got "
                         f"{shown(text)} in row {row + 1}")
    return values.astype(np.int64)


def key_values(path, block: str, where: str | None = None) -> dict[str, str] | None:
    """The ``_name value`` pairs of ``data_<block>`` outside its loops (names without '_',
    values unquoted), e.g. a PostProcess STAR's data_general; None when the file has no such
    block. InputError naming the file and line for a quote that is not closed."""
    where = where or str(path)
    pairs, found = {}, False
    with open(path, "r", encoding="utf-8", errors="surrogateescape") as fh:
        for number, kind, name, _, text in star_lines(fh):
            found = found or (kind == DATA and name == block)
            if kind != OTHER or name != block or not text.lstrip().startswith("_"):
                continue
            try:
                values = tokens(text)
            except StarSyntaxError as exc:
                raise InputError(f"{where}: line {number}: {exc}") from None
            if len(values) >= 2:
                pairs[values[0][1:]] = unquoted(values[1])
    return pairs if found else None


def parse_vector(text: str, where: str) -> np.ndarray:
    """A RELION vector value such as '[0.1,0.2]' as a float array."""
    body = str(text).strip().strip("[]").strip()
    if not body:
        return np.zeros(0)
    try:
        values = np.array([float(v) for v in body.split(",")])
    except ValueError:
        raise InputError(f"{where}: cannot read vector {text!r}") from None
    if not np.all(np.isfinite(values)):
        raise InputError(f"{where}: vector {text!r} has non-finite values")
    return values
