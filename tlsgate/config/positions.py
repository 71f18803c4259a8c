"""Where keys are written in a TOML document.

``tomllib`` returns plain dicts without positions, but every configuration problem must be
reported as ``FILE:LINE:COL``. :class:`KeyLocator` scans the text a second time, after tomllib
has accepted it, and maps each key path to the line and column of its key:

* ``("gateway", "workers")`` for ``workers = 1`` under ``[gateway]`` (or ``gateway.workers = 1``);
* ``("hostname",)`` for the first ``[[hostname]]`` and ``("hostname", 1)`` for the second one;
* ``("gateway", "listen", 0)`` for the first element of an array (column of the element).

Because the document is already known to be valid, the scanner only has to skip strings,
comments and nested values correctly; it never has to report syntax errors itself.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from pathlib import Path

from tlsgate.config.errors import Problem

KeyPath = tuple[str | int, ...]
Position = tuple[int, int]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_BARE_VALUE_END = frozenset(",]}#\n")
_AT_LINE_COLUMN = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


class KeyLocator:
    """Line and column (1-based) of every key, table header and array element of a document."""

    def __init__(self, text: str) -> None:
        self._positions: dict[KeyPath, Position] = {}
        _Scanner(text, self._positions).scan_document()

    def exact(self, path: KeyPath) -> Position | None:
        """The position of ``path`` itself, or None when it is not written in the document."""
        return self._positions.get(tuple(path))

    def locate(self, path: KeyPath) -> Position | None:
        """The position of ``path``, or of its closest written ancestor.

        A missing required key is reported at the table that should hold it.
        """
        path = tuple(path)
        while path:
            found = self._positions.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return None


def syntax_error_problem(file: Path, text: str, error: tomllib.TOMLDecodeError) -> Problem:
    """Turn tomllib's error into a positioned problem.

    tomllib (before Python 3.14) only puts the position in the message, as
    ``"Invalid value (at line 3, column 5)"`` or ``"... (at end of document)"``.
    """
    message = str(error)
    line = getattr(error, "lineno", None)
    col = getattr(error, "colno", None)
    if found := _AT_LINE_COLUMN.search(message):
        message = message[: found.start()]
        line, col = int(found.group(1)), int(found.group(2))
    elif found := _AT_END.search(message):
        message = message[: found.start()]
        line, col = _end_of(text)
    return Problem(file, line, col, f"invalid TOML: {message}")


def _end_of(text: str) -> Position:
    """The position just after the last character of ``text``."""
    return text.count("\n") + 1, len(text) - text.rfind("\n")


def _quoted_key_name(source: str) -> str:
    """The name of a quoted key such as ``"a.b"`` or ``'c d'``, escapes decoded by tomllib."""
    try:
        return tomllib.loads("k = " + source)["k"]
    except tomllib.TOMLDecodeError:  # only if the scanner lost its way; positions degrade
        return source.strip("\"'")


class _Scanner:
    """A forgiving recursive-descent pass over a valid TOML document that records positions."""

    def __init__(self, text: str, positions: dict[KeyPath, Position]) -> None:
        self.text = text
        self.pos = 0
        self.positions = positions
        self.array_table_counts: dict[KeyPath, int] = {}
        self.line_starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]

    # -- positions ------------------------------------------------------------------------------

    def where(self, offset: int) -> Position:
        line = bisect.bisect_right(self.line_starts, offset)
        return line, offset - self.line_starts[line - 1] + 1

    def record(self, path: KeyPath, offset: int, *, explicit: bool) -> None:
        """Remember where ``path`` is written.

        Tables that are only implied by a longer header (``a`` in ``[a.b]``) keep their first
        mention, but an explicit definition found later wins.
        """
        if explicit:
            self.positions[path] = self.where(offset)
        else:
            self.positions.setdefault(path, self.where(offset))

    # -- low-level reading ----------------------------------------------------------------------

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self, literal: str) -> bool:
        return self.text.startswith(literal, self.pos)

    def skip_spaces(self) -> None:
        while not self.at_end() and self.text[self.pos] in " \t":
            self.pos += 1

    def skip_blank(self) -> None:
        """Skip whitespace, newlines and comments."""
        while not self.at_end():
            char = self.text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "#":
                self.skip_line()
            else:
                return

    def skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    # -- document structure ---------------------------------------------------------------------

    def scan_document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_blank()
            if self.at_end():
                return
            start = self.pos
            if self.peek("[["):
                table = self.array_table_header()
            elif self.peek("["):
                table = self.table_header()
            else:
                self.key_value(table)
            if self.pos == start:  # never loop on text the scanner does not understand
                self.skip_line()

    def table_header(self) -> KeyPath:
        self.pos += 1
        keys = self.read_key()
        path: KeyPath = ()
        for index, (name, offset) in enumerate(keys):
            path = path + (name,)
            is_last = index == len(keys) - 1
            self.record(path, offset, explicit=is_last)
            if not is_last:
                path = self.into_latest_element(path)
        self.skip_line()
        return path

    def array_table_header(self) -> KeyPath:
        self.pos += 2
        keys = self.read_key()
        path: KeyPath = ()
        for index, (name, offset) in enumerate(keys):
            path = path + (name,)
            self.record(path, offset, explicit=False)
            if index < len(keys) - 1:
                path = self.into_latest_element(path)
        element = self.array_table_counts.get(path, 0)
        self.array_table_counts[path] = element + 1
        path = path + (element,)
        self.record(path, keys[-1][1], explicit=True)
        self.skip_line()
        return path

    def into_latest_element(self, path: KeyPath) -> KeyPath:
        """``[a.b]`` after ``[[a]]`` extends the latest element of ``a``."""
        count = self.array_table_counts.get(path)
        return path if count is None else path + (count - 1,)

    def key_value(self, table: KeyPath) -> None:
        keys = self.read_key()
        if keys:
            self.assignment(table, keys)

    def assignment(self, table: KeyPath, keys: list[tuple[str, int]]) -> None:
        """``= value`` after a key: record the key, then the positions inside the value."""
        path = self.record_dotted_key(table, keys)
        self.skip_spaces()
        if self.peek("="):
            self.pos += 1
            self.skip_spaces()
            self.value(path)

    def record_dotted_key(self, table: KeyPath, keys: list[tuple[str, int]]) -> KeyPath:
        path = table
        for index, (name, offset) in enumerate(keys):
            path = path + (name,)
            self.record(path, offset, explicit=index == len(keys) - 1)
        return path

    def read_key(self) -> list[tuple[str, int]]:
        """A (possibly dotted) key as ``[(name, offset), ...]``."""
        keys: list[tuple[str, int]] = []
        while True:
            self.skip_spaces()
            start = self.pos
            if self.peek('"') or self.peek("'"):
                name = _quoted_key_name(self.quoted_string())
            else:
                while not self.at_end() and self.text[self.pos] in _BARE_KEY_CHARS:
                    self.pos += 1
                name = self.text[start : self.pos]
            if self.pos == start:
                return keys
            keys.append((name, start))
            self.skip_spaces()
            if not self.peek("."):
                return keys
            self.pos += 1

    # -- values ---------------------------------------------------------------------------------

    def value(self, path: KeyPath) -> None:
        if self.peek('"') or self.peek("'"):
            self.quoted_string()
        elif self.peek("["):
            self.array(path)
        elif self.peek("{"):
            self.inline_table(path)
        else:
            while not self.at_end() and self.text[self.pos] not in _BARE_VALUE_END:
                self.pos += 1

    def array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_blank()
            if self.at_end() or self.peek("]"):
                self.pos += 1
                return
            element = path + (index,)
            self.record(element, self.pos, explicit=True)
            start = self.pos
            self.value(element)
            index += 1
            self.skip_blank()
            if self.peek(",") or self.pos == start:  # never stall on unexpected text
                self.pos += 1

    def inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self.skip_blank()
            if self.at_end() or self.peek("}"):
                self.pos += 1
                return
            keys = self.read_key()
            if not keys:
                self.pos += 1
                continue
            self.assignment(path, keys)
            self.skip_blank()
            if self.peek(","):
                self.pos += 1

    def quoted_string(self) -> str:
        """Skip a string of any of TOML's four kinds and return its source text."""
        start = self.pos
        quote = self.text[self.pos]
        if self.peek(quote * 3):
            self.pos += 3
            self.skip_multiline_body(quote)
        else:
            self.pos += 1
            self.skip_single_line_body(quote)
        return self.text[start : self.pos]

    def skip_single_line_body(self, quote: str) -> None:
        while not self.at_end():
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and quote == '"':
                self.pos += 1
            elif char == quote or char == "\n":
                return

    def skip_multiline_body(self, quote: str) -> None:
        delimiter = quote * 3
        while not self.at_end():
            if quote == '"' and self.peek("\\"):
                self.pos += 2
            elif self.peek(delimiter):
                self.pos += 3
                # Up to two quotes right before the closing delimiter belong to the content.
                for _ in range(2):
                    if self.peek(quote):
                        self.pos += 1
                return
            else:
                self.pos += 1
