"""Tokens of the C# subset that policy expressions are written in.

:func:`tokenize` turns expression text into a list of :class:`Token` ending with an ``eof``
token. Every token carries the 1-based ``line`` and ``col`` of its first character; lines are
separated by ``"\\n"`` only (XML has already normalised ``"\\r\\n"``), and ``"\\r"`` counts as
whitespace.

Token kinds and their ``value``:

``ident``
    an identifier (``@class`` gives ``class``) or a keyword; ``value`` is the name.
``int`` / ``long`` / ``double``
    numeric literals; ``value`` is a Python ``int`` or ``float``. Integer literals too large for
    ``int`` are ``long`` as in C#.
``string``
    regular ``"..."`` and verbatim ``@"..."`` literals, escapes resolved.
``char``
    ``'c'``; ``value`` is a one-character ``str``.
``interp``
    ``$"..."``, ``$@"..."``, ``@$"..."``: ``value`` is a list of ``str`` pieces and
    :class:`Hole` objects, each hole holding the tokens of its expression.
``op``
    punctuation and operators, ``value`` is the operator text (``"?."``, ``"=>"``...).
``eof``
    the end of the text.

Anything else raises :class:`PolicyExpressionError` at the offending character: unterminated
strings, character literals and comments are reported at their opening character.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PolicyExpressionError

#: Operators, longest first so that ``?.`` wins over ``?``.
_OPERATORS = (
    "=>", "==", "!=", "<=", ">=", "&&", "||", "??", "?.", "+=", "-=", "*=", "/=", "%=",
    "++", "--",
    "+", "-", "*", "/", "%", "!", "~", "<", ">", "=", "?", ":", ".", ",", ";",
    "(", ")", "[", "]", "{", "}", "&", "|", "^",
)
_OPERATOR_START = {op[0] for op in _OPERATORS}

_SIMPLE_ESCAPES = {
    "'": "'", '"': '"', "\\": "\\", "0": "\0", "a": "\a", "b": "\b", "f": "\f",
    "n": "\n", "r": "\r", "t": "\t", "v": "\v",
}
_INT_MAX = 2**31 - 1
_LONG_MAX = 2**63 - 1
_ULONG_MAX = 2**64 - 1
_HEX_DIGITS = set("0123456789abcdefABCDEF")


@dataclass(slots=True)
class Token:
    kind: str
    value: object
    line: int
    col: int
    #: The source text of the token (for messages such as "unexpected ')'").
    text: str = ""

    def is_op(self, op: str) -> bool:
        return self.kind == "op" and self.value == op

    def is_ident(self, name: str) -> bool:
        return self.kind == "ident" and self.value == name and not self.text.startswith("@")


@dataclass(slots=True)
class Hole:
    """One ``{expression[,alignment][:format]}`` of an interpolated string."""

    tokens: list[Token]
    line: int
    col: int
    alignment: int | None = None
    format: str | None = None
    #: Position of the closing ``}`` (where "expression expected" is reported for ``{}``).
    end: tuple[int, int] = field(default=(0, 0))


def tokenize(text: str, line: int = 1, col: int = 1) -> list[Token]:
    """The tokens of ``text``, which starts at ``line``/``col``; the last token is ``eof``."""
    return _Lexer(text, line, col).run()


def _is_digit(ch: str) -> bool:
    return ch.isascii() and ch.isdigit()


def _is_ident_start(ch: str) -> bool:
    return ch == "_" or ch.isalpha()


def _is_ident_part(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


class _Lexer:
    def __init__(self, text: str, line: int, col: int) -> None:
        self.text = text
        self.pos = 0
        self.line = line
        self.col = col
        self.tokens: list[Token] = []

    # -- helpers -----------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def advance(self, count: int = 1) -> str:
        """Consume ``count`` characters, keeping line and column up to date."""
        chunk = self.text[self.pos:self.pos + count]
        for ch in chunk:
            if ch == "\n":
                self.line += 1
                self.col = 1
            else:
                self.col += 1
        self.pos += len(chunk)
        return chunk

    def error(self, message: str, line: int | None = None,
              col: int | None = None) -> PolicyExpressionError:
        return PolicyExpressionError(message, self.line if line is None else line,
                                     self.col if col is None else col)

    def add(self, kind: str, value: object, line: int, col: int, start: int) -> None:
        self.tokens.append(Token(kind, value, line, col, self.text[start:self.pos]))

    # -- main loop ---------------------------------------------------------------------

    def run(self) -> list[Token]:
        while True:
            self.skip_trivia()
            if self.pos >= len(self.text):
                self.tokens.append(Token("eof", None, self.line, self.col, ""))
                return self.tokens
            self.token()

    def skip_trivia(self) -> None:
        """Whitespace and ``//`` / ``/* */`` comments."""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch.isspace():
                self.advance()
            elif ch == "/" and self.peek(1) == "/":
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self.advance()
            elif ch == "/" and self.peek(1) == "*":
                line, col = self.line, self.col
                end = self.text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("unterminated comment", line, col)
                self.advance(end + 2 - self.pos)
            else:
                return

    def token(self) -> None:
        ch = self.text[self.pos]
        line, col, start = self.line, self.col, self.pos
        if ch == '"':
            self.add("string", self.regular_string(), line, col, start)
        elif ch == "@" and self.peek(1) == '"':
            self.advance()
            self.add("string", self.verbatim_string(line, col), line, col, start)
        elif ch == "$" or (ch == "@" and self.peek(1) == "$"):
            self.interpolated(line, col, start)
        elif ch == "@" and _is_ident_start(self.peek(1)):
            self.advance()
            self.identifier(line, col, start)
        elif ch == "'":
            self.add("char", self.char_literal(), line, col, start)
        elif _is_digit(ch) or (ch == "." and _is_digit(self.peek(1))):
            self.number(line, col, start)
        elif _is_ident_start(ch):
            self.identifier(line, col, start)
        elif ch in _OPERATOR_START:
            self.operator(line, col, start)
        else:
            raise self.error(f"unexpected character {ch!r}")

    def identifier(self, line: int, col: int, start: int) -> None:
        begin = self.pos
        while self.pos < len(self.text) and _is_ident_part(self.text[self.pos]):
            self.advance()
        self.add("ident", self.text[begin:self.pos], line, col, start)

    def operator(self, line: int, col: int, start: int) -> None:
        for op in _OPERATORS:
            if self.text.startswith(op, self.pos):
                # "a ?.5 : b" is "?" followed by ".5", as in C#.
                if op == "?." and self.peek(2).isascii() and self.peek(2).isdigit():
                    continue
                self.advance(len(op))
                self.add("op", op, line, col, start)
                return
        raise self.error(f"unexpected character {self.text[self.pos]!r}")  # pragma: no cover

    # -- numbers -----------------------------------------------------------------------

    def number(self, line: int, col: int, start: int) -> None:
        text = self.text
        if text[self.pos] == "0" and self.peek(1) in ("x", "X", "b", "B"):
            self.radix_number(line, col, start)
            return
        begin = self.pos
        self.digits()
        is_real = False
        if self.peek() == "." and self.peek(1).isascii() and self.peek(1).isdigit():
            is_real = True
            self.advance()
            self.digits()
        if self.peek() in ("e", "E"):
            sign = 1 if self.peek(1) in ("+", "-") else 0
            if self.peek(1 + sign).isascii() and self.peek(1 + sign).isdigit():
                is_real = True
                self.advance(1 + sign)
                self.digits()
            else:
                raise self.error("invalid real literal: exponent has no digits")
        literal = text[begin:self.pos].replace("_", "")
        suffix = self.suffix()
        if suffix in ("d", "f"):
            is_real = True
        if suffix == "m":
            raise self.error("decimal literals are not supported", line, col)
        if is_real:
            if suffix in ("l", "u", "ul"):
                raise self.error("invalid suffix on a real literal", line, col)
            value = float(literal)
            if value == float("inf"):
                raise self.error("floating-point constant is outside the range of type "
                                 "'double'", line, col)
            self.add("double", value, line, col, start)
            return
        if len(literal.lstrip("0")) > 20:
            raise self.error("integral constant is too large", line, col)
        self.integer(int(literal), suffix, line, col, start)

    def radix_number(self, line: int, col: int, start: int) -> None:
        base = 16 if self.peek(1) in ("x", "X") else 2
        self.advance(2)
        begin = self.pos
        valid = _HEX_DIGITS if base == 16 else set("01")
        while self.peek() in valid or (self.peek() == "_" and self.pos > begin):
            if self.peek() == "":
                break
            self.advance()
        literal = self.text[begin:self.pos].replace("_", "")
        if not literal:
            raise self.error("invalid number: no digits after the prefix", line, col)
        if len(literal.lstrip("0")) > 64:
            raise self.error("integral constant is too large", line, col)
        self.integer(int(literal, base), self.suffix(), line, col, start, radix=True)

    def digits(self) -> None:
        while self.peek().isascii() and (self.peek().isdigit() or self.peek() == "_"):
            self.advance()

    def suffix(self) -> str:
        """A literal suffix, lower-cased: "", "l", "u", "ul", "d", "f" or "m"."""
        ch = self.peek().lower()
        if ch in ("d", "f", "m"):
            self.advance()
            return ch
        if ch in ("l", "u"):
            other = self.peek(1).lower()
            if other in ("l", "u") and other != ch:
                self.advance(2)
                return "ul"
            self.advance()
            return ch
        return ""

    def integer(self, value: int, suffix: str, line: int, col: int, start: int,
                radix: bool = False) -> None:
        if "u" in suffix:
            raise self.error("unsigned literals are not supported", line, col)
        if value > _ULONG_MAX or (value > _LONG_MAX and not radix):
            raise self.error("integral constant is too large", line, col)
        if radix and value > _LONG_MAX:
            raise self.error("unsigned literals are not supported", line, col)
        if radix and _INT_MAX < value <= 2**32 - 1 and suffix != "l":
            raise self.error("unsigned literals are not supported", line, col)
        kind = "long" if suffix == "l" or value > _INT_MAX else "int"
        if _is_ident_part(self.peek()):
            raise self.error(f"invalid character {self.peek()!r} in a number")
        self.add(kind, value, line, col, start)

    # -- strings -----------------------------------------------------------------------

    def regular_string(self) -> str:
        line, col = self.line, self.col
        self.advance()  # opening quote
        out: list[str] = []
        while True:
            ch = self.peek()
            if ch == "" or ch == "\n":
                raise self.error("unterminated string literal", line, col)
            if ch == '"':
                self.advance()
                return "".join(out)
            if ch == "\\":
                out.append(self.escape())
            else:
                out.append(self.advance())

    def verbatim_string(self, line: int, col: int) -> str:
        """After ``@``: ``"..."`` with ``""`` for a quote, over several lines if need be."""
        self.advance()  # opening quote
        out: list[str] = []
        while True:
            ch = self.peek()
            if ch == "":
                raise self.error("unterminated verbatim string literal", line, col)
            if ch == '"':
                if self.peek(1) == '"':
                    self.advance(2)
                    out.append('"')
                    continue
                self.advance()
                return "".join(out)
            out.append(self.advance())

    def char_literal(self) -> str:
        line, col = self.line, self.col
        self.advance()
        ch = self.peek()
        if ch == "'":
            raise self.error("empty character literal", line, col)
        if ch == "" or ch == "\n":
            raise self.error("unterminated character literal", line, col)
        value = self.escape() if ch == "\\" else self.advance()
        if self.peek() != "'":
            if self.peek() in ("", "\n"):
                raise self.error("unterminated character literal", line, col)
            raise self.error("too many characters in character literal", line, col)
        self.advance()
        if len(value) != 1:
            raise self.error("character literal outside the basic multilingual plane", line, col)
        return value

    def escape(self) -> str:
        """A backslash escape of a regular string or character literal."""
        line, col = self.line, self.col
        self.advance()  # backslash
        ch = self.peek()
        if ch in _SIMPLE_ESCAPES:
            self.advance()
            return _SIMPLE_ESCAPES[ch]
        if ch in ("u", "U", "x"):
            self.advance()
            width = {"u": 4, "U": 8, "x": 4}[ch]
            begin = self.pos
            while self.pos - begin < width and self.peek() in _HEX_DIGITS and self.peek():
                self.advance()
            digits = self.text[begin:self.pos]
            if not digits or (ch != "x" and len(digits) != width):
                raise self.error("unrecognized escape sequence", line, col)
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise self.error("unrecognized escape sequence", line, col)
            return chr(code)
        raise self.error("unrecognized escape sequence", line, col)

    # -- interpolated strings ----------------------------------------------------------

    def interpolated(self, line: int, col: int, start: int) -> None:
        verbatim = False
        if self.peek() == "@":              # @$"
            verbatim = True
            self.advance(2)
        else:                               # $" or $@"
            self.advance()
            if self.peek() == "@":
                verbatim = True
                self.advance()
        if self.peek() != '"':
            raise self.error("'$' must start an interpolated string ($\"...\")", line, col)
        self.advance()
        parts: list[str | Hole] = []
        text: list[str] = []
        while True:
            ch = self.peek()
            if ch == "" or (ch == "\n" and not verbatim):
                raise self.error("unterminated interpolated string", line, col)
            if ch == '"':
                if verbatim and self.peek(1) == '"':
                    self.advance(2)
                    text.append('"')
                    continue
                self.advance()
                break
            if ch == "{":
                if self.peek(1) == "{":
                    self.advance(2)
                    text.append("{")
                    continue
                if text:
                    parts.append("".join(text))
                    text = []
                parts.append(self.hole(line, col, verbatim))
                continue
            if ch == "}":
                if self.peek(1) == "}":
                    self.advance(2)
                    text.append("}")
                    continue
                raise self.error("'}' in an interpolated string must be doubled ('}}')")
            if ch == "\\" and not verbatim:
                text.append(self.escape())
                continue
            text.append(self.advance())
        if text:
            parts.append("".join(text))
        self.add("interp", parts, line, col, start)

    def hole(self, string_line: int, string_col: int, verbatim: bool) -> Hole:
        """``{expression[,alignment][:format]}``: the expression is lexed like any other."""
        self.advance()  # {
        expr_line, expr_col, begin = self.line, self.col, self.pos
        end = self.hole_end(string_line, string_col)
        expression = self.text[begin:end]
        tokens = tokenize(expression, expr_line, expr_col)
        self.advance(end - self.pos)
        alignment = None
        fmt = None
        if self.peek() == ",":
            self.advance()
            a_line, a_col, a_begin = self.line, self.col, self.pos
            while self.peek() not in ("", ":", "}", '"', "\n"):
                self.advance()
            spec = self.text[a_begin:self.pos].strip()
            try:
                alignment = int(spec)
            except ValueError:
                raise self.error("alignment of an interpolation must be an integer",
                                 a_line, a_col) from None
        if self.peek() == ":":
            self.advance()
            f_begin = self.pos
            while self.peek() not in ("", "}", '"') and not (self.peek() == "\n" and not verbatim):
                self.advance()
            fmt = self.text[f_begin:self.pos]
        if self.peek() != "}":
            raise self.error("unterminated interpolation: '}' expected", expr_line, expr_col - 1)
        hole = Hole(tokens, expr_line, expr_col, alignment, fmt, (self.line, self.col))
        self.advance()
        return hole

    def hole_end(self, string_line: int, string_col: int) -> int:
        """Index where a hole's expression ends: the first ``,``, ``:`` or ``}`` outside
        brackets, strings and character literals. Scans without consuming."""
        depth = 0
        index = self.pos
        text = self.text
        while index < len(text):
            ch = text[index]
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                if depth == 0:
                    if ch == "}":
                        return index
                else:
                    depth -= 1
            elif depth == 0 and ch in ",:":
                # "?." "??" and "::" do not end the hole; a ':' after '?' (ternary) does,
                # as in C# (which requires parentheses around a conditional there).
                return index
            elif ch in "\"'" or (ch in "@$" and text[index + 1:index + 2] in ('"', "@", "$")):
                index = self._skip_quoted(index)
                continue
            index += 1
        return index

    def _skip_quoted(self, index: int) -> int:
        """Index just after the string/char literal starting at ``index`` (or the text end),
        nested interpolations included."""
        text = self.text
        verbatim = interpolated = False
        while index < len(text) and text[index] in "@$":
            verbatim = verbatim or text[index] == "@"
            interpolated = interpolated or text[index] == "$"
            index += 1
        if index >= len(text):
            return index
        quote = text[index]
        index += 1
        depth = 0
        while index < len(text):
            ch = text[index]
            if depth:
                if ch in "\"'" or (ch in "@$" and text[index + 1:index + 2] in ('"', "@", "$")):
                    index = self._skip_quoted(index)
                    continue
                if ch in "([{":
                    depth += 1
                elif ch in ")]}":
                    depth -= 1
                index += 1
                continue
            if ch == "\\" and not verbatim:
                index += 2
                continue
            if interpolated and ch in "{}":
                if text[index + 1:index + 2] == ch:
                    index += 2
                    continue
                if ch == "{":
                    depth += 1
                index += 1
                continue
            if ch == quote:
                if verbatim and text[index + 1:index + 2] == quote:
                    index += 2
                    continue
                return index + 1
            if ch == "\n" and not verbatim:
                return index
            index += 1
        return index
