"""The lines of a STAR file as RELION reads them: one tokenizer and one line classifier, shared
by the particle STAR reader and writer.

What RELION (3.1.3's reader, checked with ``relion_star_handler``) takes from a line:

* a loop row is split on whitespace (spaces, tabs); a value that starts with a quote (``"`` or
  ``'``) runs to the same quote followed by whitespace or the end of the line, spaces included;
* an unquoted value that starts with ``#`` starts a comment: it and the rest of the line are not
  values (``og#1`` and ``stack#a.mrcs`` are values);
* a line whose first character (after spaces) is ``#`` is a comment; among a loop's rows RELION
  reads it as a row without values and stops;
* a blank line ends a loop's rows; the next ``data_`` or ``loop_`` does not (RELION reads it as
  a row), so a loop needs a blank line after its last row;
* ``_name`` lines right after ``loop_`` are its columns (whatever follows the name, e.g. ``#3``,
  is ignored); RELION 3.1.3 does not read files with CRLF line ends (it finds no tables).
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

#: A quoted value (up to the same quote followed by whitespace or the end) or any other value.
TOKEN = re.compile(r"""(?:"[^\n]*?"|'[^\n]*?')(?=\s|$)|\S+""")
QUOTES = "\"'"


class StarSyntaxError(ValueError):
    """A line RELION cannot read (the reader adds the file and line)."""


def tokens(line: str) -> list[str]:
    """The values of a loop row, each as its exact text (quotes kept); a trailing ``# ...``
    comment dropped. StarSyntaxError for a quote that is not closed."""
    if '"' not in line and "'" not in line and "#" not in line:
        return line.split()
    values = []
    for token in TOKEN.findall(line):
        if token[0] == "#":
            break
        if token[0] in QUOTES and (len(token) < 2 or token[-1] != token[0]):
            raise StarSyntaxError(f"the quote of {token!r} is not closed (a quoted value ends "
                                  f"with the same quote followed by a space)")
        values.append(token)
    return values


def unquoted(token: str) -> str:
    """A value's text without the quotes that protect spaces in it."""
    if len(token) >= 2 and token[0] in QUOTES and token[-1] == token[0]:
        return token[1:-1]
    return token


def quoted(text: str) -> str:
    """``text`` as a STAR value: in double quotes (as RELION writes them) when it is empty or
    holds whitespace or quotes, or starts with ``#``, ``_``, ``data_`` or ``loop_``."""
    if (not text or any(c.isspace() for c in text) or '"' in text or "'" in text
            or text[0] in "#_" or text.startswith(("data_", "loop_"))):
        return f'"{text}"'
    return text


# Line kinds ------------------------------------------------------------------------------------
DATA = "data"        # data_NAME: a block starts
LOOP = "loop"        # loop_: a loop's column names follow
LABEL = "label"      # _name of a loop
ROW = "row"          # a loop's row of values
END = "end"          # the blank line that ends a loop's rows
ROW_COMMENT = "row comment"  # a comment line among a loop's rows (RELION refuses it)
STRAY = "stray"      # text in a block after its loop has ended (RELION ignores it)
OTHER = "other"      # blank lines, comments, key-value pairs (_name value) outside loops


def star_lines(lines: Iterable[str]) -> Iterator[tuple[int, str, str | None, list, str]]:
    """Classify each line of a STAR file (see the module docstring for the rules): yields
    (line number from 1, kind, block name (None before the first data_), the current loop's
    column names (without '_'; one list object per loop, complete from its first row on), the
    line with its line end)."""
    block, labels, state = None, [], "none"  # state: none, header, rows, ended
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            kind = END if state == "rows" else OTHER
            state = "ended" if state == "rows" else state
        elif text[0] == "#":
            kind = ROW_COMMENT if state == "rows" else OTHER
        elif text.startswith("data_"):
            block, labels, state, kind = text[5:], [], "none", DATA
        elif text.startswith("loop_") and text.split()[0] == "loop_":
            labels, state, kind = [], "header", LOOP
        elif text[0] == "_" and state == "header":
            labels.append(text.split()[0][1:])
            kind = LABEL
        elif state in ("header", "rows"):
            state, kind = "rows", ROW
        elif state == "ended" and text[0] != "_":
            kind = STRAY
        else:
            kind = OTHER
        yield number, kind, block, labels, line
