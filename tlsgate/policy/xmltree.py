"""A small XML tree with source positions, for policy documents.

``xml.etree`` forgets where elements were; policy errors must say ``FILE:LINE:COL``. expat
reports the position of each start tag, and of each run of text, so this module builds its own
minimal tree on top of it. Attribute positions are found by scanning the start tag's source text
(expat gives none), so an error in ``condition="@(...)"`` points into the expression itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.parsers import expat


@dataclass
class XmlError(Exception):
    message: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.line}:{self.col}: {self.message}"


@dataclass
class Element:
    tag: str
    attributes: dict[str, str]
    line: int
    col: int
    children: list[Element] = field(default_factory=list)
    text: str = ""
    text_line: int = 0
    text_col: int = 0
    # (line, col) of the first character of each attribute's value
    attribute_positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def value_position(self, name: str) -> tuple[int, int]:
        return self.attribute_positions.get(name, (self.line, self.col))


_ATTRIBUTE = re.compile(r'([A-Za-z_][\w.:-]*)\s*=\s*(["\'])')


def parse_xml(text: str) -> Element:
    """Parse ``text`` into an :class:`Element` tree; raise :class:`XmlError` with a position."""
    parser = expat.ParserCreate()
    line_starts = _line_starts(text)
    stack: list[Element] = []
    root: list[Element] = []

    def start(tag: str, attributes: dict[str, str]) -> None:
        line, col = parser.CurrentLineNumber, parser.CurrentColumnNumber + 1
        element = Element(tag, attributes, line, col)
        element.attribute_positions = _attribute_positions(text, line_starts, line, col)
        if stack:
            stack[-1].children.append(element)
        else:
            root.append(element)
        stack.append(element)

    def end(_tag: str) -> None:
        stack.pop()

    def characters(data: str) -> None:
        element = stack[-1] if stack else None
        if element is None:
            return
        if not element.text.strip() and data.strip():
            # Remember where the meaningful text starts (leading whitespace skipped).
            skipped = len(data) - len(data.lstrip())
            line, col = parser.CurrentLineNumber, parser.CurrentColumnNumber + 1
            element.text_line, element.text_col = _advance(line, col, data[:skipped])
            element.text = data.lstrip()
        else:
            element.text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    # No buffer_text: expat then reports each text run at its start, which is what
    # positions need.
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise XmlError(expat.errors.messages[exc.code], exc.lineno, exc.offset + 1) from None
    return root[0]


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for index, char in enumerate(text):
        if char == "\n":
            starts.append(index + 1)
    return starts


def _attribute_positions(text: str, line_starts: list[int], line: int,
                         col: int) -> dict[str, tuple[int, int]]:
    """Positions of attribute values inside the start tag beginning at (line, col)."""
    offset = line_starts[line - 1] + col - 1
    positions: dict[str, tuple[int, int]] = {}
    index = text.find(" ", offset)
    while 0 <= index < len(text):
        match = _ATTRIBUTE.search(text, index)
        if match is None or _tag_ends_between(text, index, match.start()):
            break
        value_start = match.end()
        positions[match.group(1)] = _position(line_starts, value_start)
        closing = text.find(match.group(2), value_start)
        if closing < 0:
            break
        index = closing + 1
    return positions


def _tag_ends_between(text: str, start: int, end: int) -> bool:
    return ">" in text[start:end]


def _position(line_starts: list[int], offset: int) -> tuple[int, int]:
    low, high = 0, len(line_starts) - 1
    while low < high:
        mid = (low + high + 1) // 2
        if line_starts[mid] <= offset:
            low = mid
        else:
            high = mid - 1
    return low + 1, offset - line_starts[low] + 1


def _advance(line: int, col: int, skipped: str) -> tuple[int, int]:
    for char in skipped:
        if char == "\n":
            line, col = line + 1, 1
        else:
            col += 1
    return line, col
