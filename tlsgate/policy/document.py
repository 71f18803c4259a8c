"""Policy documents: API Management's XML, checked and compiled once, at load time.

:func:`load_policy_file` / :func:`parse_policy` turn a document into a
:class:`PolicyDocument` (sections of :mod:`~tlsgate.policy.statements` objects) and a list of
every problem found, each a :class:`~tlsgate.config.errors.Problem` with the file, line and
column (``tlsgate check-config`` prints them as ``FILE:LINE:COL: message``): malformed XML,
unknown elements and attributes, missing attributes, bad attribute values, expressions that
do not compile (positioned inside the expression), conditions that are not ``bool``,
``<base />`` where it cannot be... A document with problems gives no statements.

Expressions in attributes, as APIM writes them. The seed's policies (and APIM's documentation)
put C# string literals inside double-quoted attributes::

    <when condition="@(context.Request.Certificate.Issuer != "trusted-issuer")">

which is not well-formed XML; APIM accepts it, so tlsgate does too. Before the XML parser
runs, every attribute value and element text that starts with ``@(`` or ``@{`` is scanned as
C# (strings, characters, comments, interpolation holes, bracket nesting) up to its closing
bracket, and inside that span the attribute's own quote, ``<``, a bare ``&`` (one that does
not start ``&amp;``, ``&lt;``...), and line breaks/tabs in attributes (which XML would turn
into spaces) are swapped for private-use characters, one for one, and swapped back in the
parsed values. Positions therefore stay exact, and properly escaped XML keeps working.
A ``<!DOCTYPE`` (entity definitions) is refused.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsgate.config.errors import Problem
from tlsgate.policy import model as _model
from tlsgate.policy import statements as s
from tlsgate.policy.csharp import PolicyExpressionError, compile_template
from tlsgate.policy.xmltree import Element, XmlError, parse_xml

SECTIONS = ("inbound", "backend", "outbound", "on-error")
SCOPES = ("global", "api")
MAX_IDENTITIES = 10
ALL_SECTIONS = frozenset(SECTIONS)

# context.Response.Body reads need the response body buffered first: the engine looks for this
# name in CompiledExpression.reads (the object model declares no input for it).
for _method in _model.RESPONSE_BODY_DEF.members.get("As", []):
    if _method.reads is None:
        _method.reads = "response_body"


@dataclass
class PolicyDocument:
    """A compiled document: its sections (only those it has), each a tuple of statements in
    which :class:`~tlsgate.policy.statements.Base` marks ``<base />``."""

    path: Path
    scope: str
    sections: dict[str, tuple[s.Statement, ...]] = field(default_factory=dict)


def load_policy_file(path: Path, *, scope: str,
                     certificate_ids: Iterable[str] | None = None,
                     ) -> tuple[PolicyDocument | None, list[Problem]]:
    """Read and compile a document (``scope`` "global" or "api"); (None, problems) when it
    has problems. ``certificate_ids``: the configuration's ``[[certificate]]`` ids, checked by
    ``issuer-certificate-id`` (None: not checked)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        return None, [Problem(path, None, None,
                              f"cannot read the policy document: {error.strerror or error}")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return None, [Problem(path, None, None,
                              f"the policy document is not UTF-8 text (byte {error.start})")]
    return parse_policy(text, path, scope=scope, certificate_ids=certificate_ids)


def parse_policy(text: str, path: Path | str = "<policy>", *, scope: str = "api",
                 certificate_ids: Iterable[str] | None = None,
                 ) -> tuple[PolicyDocument | None, list[Problem]]:
    """Compile a document from its text; see :func:`load_policy_file`."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    compiler = _Compiler(Path(path), text, scope,
                         None if certificate_ids is None else frozenset(certificate_ids))
    document = compiler.compile()
    problems = sorted(compiler.problems, key=Problem.sort_key)
    return (None if problems else document), problems


# -- expressions inside XML ------------------------------------------------------------------

_PROTECT = {'"': "\ue000", "'": "\ue001", "<": "\ue002", "&": "\ue003", "\n": "\ue004",
            "\r": "\ue005", "\t": "\ue006"}
_RESTORE = str.maketrans({"\ue000": '"', "\ue001": "'", "\ue002": "<", "\ue003": "&",
                          "\ue004": "\n", "\ue005": "", "\ue006": "\t"})
_RESERVED_CHARS = re.compile("[\ue000-\ue006]")
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|apos|#[0-9]+|#x[0-9A-Fa-f]+);")
_ENTITY_TEXT = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&apos;": "'"}
_TAG_NAME = re.compile(r"[A-Za-z_:][\w.:-]*")
_ATTRIBUTE = re.compile(r"([A-Za-z_:][\w.:-]*)\s*=\s*([\"'])")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}


def _char(text: str, i: int) -> tuple[str, int]:
    """The character at ``i`` as XML will decode it (an entity is one character)."""
    char = text[i]
    if char == "&":
        match = _ENTITY.match(text, i)
        if match:
            entity = match.group()
            if entity in _ENTITY_TEXT:
                return _ENTITY_TEXT[entity], len(entity)
            number = entity[3:-1] if entity[2] == "x" else entity[2:-1]
            try:
                return chr(int(number, 16 if entity[2] == "x" else 10)), len(entity)
            except (ValueError, OverflowError):
                return "\ufffd", len(entity)
    return char, 1


def _scan_code(text: str, i: int, closer: str, limit: int) -> int:
    """From just after an opening bracket, the index after its matching ``closer``
    (C# strings, characters and comments skipped), or -1."""
    stack = [closer]
    while i < limit:
        char, size = _char(text, i)
        if char == '"':
            i = _scan_string(text, i + size, limit, verbatim=False, interpolated=False)
        elif char in "@$":
            j = i + size
            prefix = char
            if j < limit:
                nxt, nsize = _char(text, j)
                if nxt in "@$" and nxt != char:
                    prefix += nxt
                    j += nsize
            if j < limit and _char(text, j)[0] == '"':
                i = _scan_string(text, j + 1 if text[j] == '"' else j + _char(text, j)[1],
                                 limit, verbatim="@" in prefix, interpolated="$" in prefix)
            else:
                i += size
        elif char == "'":
            i = _scan_char(text, i + size, limit)
        elif char == "/" and i + 1 < limit and text[i + 1] in "/*":
            if text[i + 1] == "/":
                end = text.find("\n", i)
                i = limit if end < 0 else end
            else:
                end = text.find("*/", i + 2)
                i = -1 if end < 0 else end + 2
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
            i += size
        elif char in ")]}":
            if stack[-1] == char:
                stack.pop()
            i += size
            if not stack:
                return i
        else:
            i += size
        if i < 0:
            return -1
    return -1


def _scan_string(text: str, i: int, limit: int, *, verbatim: bool, interpolated: bool) -> int:
    while i < limit:
        char, size = _char(text, i)
        if char == "\\" and not verbatim:
            i += size
            if i < limit:
                i += _char(text, i)[1]
            continue
        if char == '"':
            if verbatim and i + size < limit and _char(text, i + size)[0] == '"':
                i += size + _char(text, i + size)[1]
                continue
            return i + size
        if interpolated and char in "{}":
            if i + size < limit and _char(text, i + size)[0] == char:
                i += size + _char(text, i + size)[1]
                continue
            if char == "{":
                i = _scan_code(text, i + size, "}", limit)
                if i < 0:
                    return -1
                continue
        if char == "\n" and not verbatim:
            return -1
        i += size
    return -1


def _scan_char(text: str, i: int, limit: int) -> int:
    while i < limit:
        char, size = _char(text, i)
        if char == "\\":
            i += size
            if i < limit:
                i += _char(text, i)[1]
            continue
        if char == "'":
            return i + size
        if char == "\n":
            return -1
        i += size
    return -1


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _expression_end(text: str, start: int) -> int:
    """``text[start:]`` begins with ``@(`` or ``@{``: the index after its closing bracket."""
    return _scan_code(text, start + 2, _CLOSERS[text[start + 1]], len(text))


def protect_expressions(text: str) -> tuple[str, int | None]:
    """The text with expression characters XML would choke on swapped for placeholders (see
    the module documentation), and the offset of a ``<!DOCTYPE`` / ``<!ENTITY`` if any."""
    changes: list[tuple[int, int, str | None]] = []     # (start, end, attribute quote)
    n = len(text)
    i = 0
    while i < n:
        lt = text.find("<", i)
        if lt < 0:
            break
        if text.startswith("<!--", lt):
            end = text.find("-->", lt + 4)
            i = n if end < 0 else end + 3
            continue
        if text.startswith("<![CDATA[", lt):
            end = text.find("]]>", lt)
            i = n if end < 0 else end + 3
            continue
        if text.startswith("<!", lt):
            return text, lt
        if text.startswith("<?", lt) or text.startswith("</", lt):
            end = text.find(">", lt)
            i = n if end < 0 else end + 1
            continue
        name = _TAG_NAME.match(text, lt + 1)
        if name is None:
            i = lt + 1
            continue
        j = name.end()
        opened = False
        while True:
            j = _skip_space(text, j)
            if j >= n:
                break
            if text.startswith("/>", j):
                j += 2
                break
            if text[j] == ">":
                j += 1
                opened = True
                break
            attribute = _ATTRIBUTE.match(text, j)
            if attribute is None:
                j += 1
                continue
            quote = attribute.group(2)
            value = attribute.end()
            if text.startswith(("@(", "@{"), value):
                end = _expression_end(text, value)
                if end > 0:
                    after = _skip_space(text, end)
                    if after < n and text[after] == quote:
                        changes.append((value, end, quote))
                        j = after + 1
                        continue
            close = text.find(quote, value)
            if close < 0:
                j = n
                break
            j = close + 1
        i = j
        if opened:
            k = _skip_space(text, j)
            if text.startswith(("@(", "@{"), k):
                end = _expression_end(text, k)
                if end > 0:
                    changes.append((k, end, None))
                    i = end
    if not changes:
        return text, None
    chars = list(text)
    for start, end, quote in changes:
        for index in range(start, end):
            char = text[index]
            if char == "&":
                if not _ENTITY.match(text, index):
                    chars[index] = _PROTECT["&"]
            elif char == "<" or (quote is not None and (char == quote or char in "\r\n\t")):
                chars[index] = _PROTECT[char]
    return "".join(chars), None


def _restore(element: Element) -> None:
    element.attributes = {k: v.translate(_RESTORE) for k, v in element.attributes.items()}
    element.text = element.text.translate(_RESTORE)
    for child in element.children:
        _restore(child)


# -- the compiler ---------------------------------------------------------------------------

_COMMON = frozenset({"id"})
#: Sections each statement may appear in (APIM's policy reference).
_ALLOWED_IN = {
    "choose": ALL_SECTIONS, "return-response": ALL_SECTIONS, "set-status": ALL_SECTIONS,
    "set-header": ALL_SECTIONS, "set-variable": ALL_SECTIONS, "set-body": ALL_SECTIONS,
    "forward-request": frozenset({"backend"}), "check-header": frozenset({"inbound"}),
    "validate-client-certificate": frozenset({"inbound"}),
}
_IDENTITY_ATTRIBUTES = ("thumbprint", "serial-number", "common-name", "subject", "dns-name",
                        "issuer-subject", "issuer-thumbprint", "issuer-certificate-id")
_UNSUPPORTED_ATTRIBUTES = {
    ("return-response", "response-variable-name"):
        "tlsgate has no send-request, so there are no response variables",
    ("set-body", "template"): "liquid templates are not supported by tlsgate",
    ("set-body", "xsi-nil"): "xsi-nil is not supported by tlsgate",
    ("set-body", "parse-date"): "parse-date is not supported by tlsgate",
    ("forward-request", "follow-redirects"): "tlsgate never follows backend redirects",
    ("forward-request", "buffer-request-body"): "tlsgate streams request bodies",
    ("forward-request", "buffer-response"): "tlsgate streams responses",
    ("forward-request", "fail-on-error-status-code"): "not supported by tlsgate",
    ("forward-request", "http-version"): "tlsgate talks HTTP/1.1 to backends",
    ("forward-request", "continue-timeout"): "not supported by tlsgate",
}
_TRUE_FALSE = {"true": True, "false": False}
_HEX40 = re.compile(r"^[0-9A-F]{40}$")


class _Compiler:
    def __init__(self, path: Path, text: str, scope: str,
                 certificate_ids: frozenset[str] | None) -> None:
        self.path = path
        self.text = text
        self.scope = scope
        self.certificate_ids = certificate_ids
        self.problems: list[Problem] = []
        self._line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    # -- positions and problems -------------------------------------------------------------

    def problem(self, line: int | None, col: int | None, message: str) -> None:
        self.problems.append(Problem(self.path, line, col, message))

    def at_element(self, element: Element, message: str) -> None:
        self.problem(element.line, element.col, message)

    def at_value(self, element: Element, name: str, message: str) -> None:
        line, col = element.value_position(name)
        self.problem(line, col, message)

    def at_name(self, element: Element, name: str, message: str) -> None:
        """At the attribute's name (found backwards from its value)."""
        if name not in element.attribute_positions:
            self.at_element(element, message)
            return
        offset = self._offset(*element.attribute_positions[name]) - 1   # the quote
        offset -= 1
        while offset > 0 and self.text[offset] in " \t\r\n":
            offset -= 1
        if self.text[offset] == "=":
            offset -= 1
            while offset > 0 and self.text[offset] in " \t\r\n":
                offset -= 1
        start = offset - len(name) + 1
        if self.text[start:offset + 1] == name:
            self.problem(*self._position(start), message)
        else:
            self.at_value(element, name, message)

    def at_text(self, element: Element, message: str) -> None:
        if element.text_line:
            self.problem(element.text_line, element.text_col, message)
        else:
            self.at_element(element, message)

    def _offset(self, line: int, col: int) -> int:
        return self._line_starts[line - 1] + col - 1

    def _position(self, offset: int) -> tuple[int, int]:
        low, high = 0, len(self._line_starts) - 1
        while low < high:
            mid = (low + high + 1) // 2
            if self._line_starts[mid] <= offset:
                low = mid
            else:
                high = mid - 1
        return low + 1, offset - self._line_starts[low] + 1

    def _relocate(self, start: tuple[int, int], value: str,
                  error: PolicyExpressionError) -> tuple[int, int]:
        """The file position of ``error`` (relative to ``value``, which starts at ``start``
        in the file): entities, CR LF and CDATA markers are walked over in the raw text."""
        starts = [0] + [i + 1 for i, c in enumerate(value) if c == "\n"]
        row = max(1, min(error.line, len(starts)))
        logical = min(starts[row - 1] + max(error.col, 1) - 1, len(value))
        text = self.text
        i = self._offset(*start)
        count = 0
        in_cdata = False
        while count < logical and i < len(text):
            if in_cdata:
                if text.startswith("]]>", i):
                    in_cdata = False
                    i += 3
                    continue
            else:
                if text.startswith("<![CDATA[", i):
                    in_cdata = True
                    i += 9
                    continue
                if text.startswith("<!--", i):
                    end = text.find("-->", i)
                    i = len(text) if end < 0 else end + 3
                    continue
                match = _ENTITY.match(text, i)
                if match:
                    i = match.end()
                    count += 1
                    continue
            i += 2 if text.startswith("\r\n", i) else 1
            count += 1
        return self._position(i)

    # -- document ------------------------------------------------------------------------

    def compile(self) -> PolicyDocument | None:
        reserved = _RESERVED_CHARS.search(self.text)
        if reserved:
            self.problem(*self._position(reserved.start()),
                         "the document contains a private-use character U+E000-U+E006, "
                         "which tlsgate reserves")
            return None
        protected, doctype = protect_expressions(self.text)
        if doctype is not None:
            self.problem(*self._position(doctype),
                         "DOCTYPE and entity declarations are not allowed in policy documents")
            return None
        try:
            root = parse_xml(protected)
        except XmlError as error:
            self.problem(error.line, error.col, f"malformed XML: {error.message}")
            return None
        _restore(root)
        document = PolicyDocument(self.path, self.scope)
        if root.tag != "policies":
            self.at_element(root, f"the root element must be <policies>, not <{root.tag}>")
            return None
        self.attributes(root, set())
        self.no_text(root)
        for child in root.children:
            if child.tag not in SECTIONS:
                self.at_element(child, f"unknown section <{child.tag}>"
                                f"{_hint(child.tag, SECTIONS)}; a policy document has "
                                "<inbound>, <backend>, <outbound> and <on-error>")
                continue
            if child.tag in document.sections:
                self.at_element(child, f"<{child.tag}> appears twice")
                continue
            self.attributes(child, set())
            self.no_text(child)
            document.sections[child.tag] = tuple(self.section(child))
        return document

    def section(self, element: Element) -> list[s.Statement]:
        statements: list[s.Statement] = []
        bases = 0
        for child, path in self.children_paths(element, ""):
            if child.tag == "base":
                bases += 1
                self.attributes(child, set())
                self.no_content(child)
                if self.scope == "global":
                    self.at_element(child, "<base /> is not allowed in the global scope: "
                                    "there is no parent scope to include")
                elif bases > 1:
                    self.at_element(child, f"<base /> appears more than once in "
                                    f"<{element.tag}>")
                statements.append(s.Base(line=child.line, col=child.col, path=path,
                                         scope=self.scope))
                continue
            statement = self.statement(child, element.tag, path)
            if statement is not None:
                statements.append(statement)
        return statements

    def children_paths(self, element: Element, prefix: str) -> list[tuple[Element, str]]:
        """Children with their LastError.Path: ``choose[1]\\when[2]\\set-status[1]``."""
        counts: dict[str, int] = {}
        out = []
        for child in element.children:
            counts[child.tag] = counts.get(child.tag, 0) + 1
            step = f"{child.tag}[{counts[child.tag]}]"
            out.append((child, f"{prefix}\\{step}" if prefix else step))
        return out

    def statements(self, element: Element, section: str, prefix: str) -> list[s.Statement]:
        out = []
        for child, path in self.children_paths(element, prefix):
            if child.tag == "base":
                self.at_element(child, f"<base /> must be a direct child of <{section}>")
                continue
            statement = self.statement(child, section, path)
            if statement is not None:
                out.append(statement)
        return out

    def statement(self, element: Element, section: str, path: str) -> s.Statement | None:
        tag = element.tag
        builder = _BUILDERS.get(tag)
        if builder is None:
            self.at_element(element, f"unknown policy <{tag}>{_hint(tag, _BUILDERS)}; "
                            f"tlsgate supports {', '.join(sorted(_BUILDERS))}")
            return None
        if section not in _ALLOWED_IN[tag]:
            allowed = ", ".join(f"<{name}>" for name in SECTIONS if name in _ALLOWED_IN[tag])
            self.at_element(element, f"<{tag}> is not allowed in <{section}> (only in "
                            f"{allowed})")
            return None
        common = dict(policy_id=element.attributes.get("id", ""), path=path, scope=self.scope,
                      line=element.line, col=element.col)
        return builder(self, element, section, path, common)

    # -- checks ----------------------------------------------------------------------------

    def attributes(self, element: Element, allowed: set[str] | frozenset[str],
                   required: Iterable[str] = ()) -> bool:
        ok = True
        allowed = set(allowed) | (_COMMON if element.tag in _BUILDERS else set())
        for name in element.attributes:
            if name in allowed:
                continue
            ok = False
            reason = _UNSUPPORTED_ATTRIBUTES.get((element.tag, name))
            if reason:
                self.at_name(element, name, f"<{element.tag}> attribute '{name}' is not "
                             f"supported: {reason}")
            elif allowed:
                self.at_name(element, name, f"unknown attribute '{name}' on <{element.tag}>"
                             f"{_hint(name, allowed)} (allowed: {', '.join(sorted(allowed))})")
            else:
                self.at_name(element, name, f"<{element.tag}> takes no attributes")
        for name in required:
            if name not in element.attributes:
                ok = False
                self.at_element(element, f"<{element.tag}> needs the attribute '{name}'")
        return ok

    def no_text(self, element: Element) -> None:
        if element.text.strip():
            self.at_text(element, f"unexpected text in <{element.tag}>")

    def no_content(self, element: Element) -> None:
        self.no_text(element)
        for child in element.children:
            self.at_element(child, f"<{element.tag}> takes no child elements "
                            f"(found <{child.tag}>)")

    def template(self, element: Element, name: str) -> Any | None:
        value = element.attributes[name]
        try:
            return compile_template(value)
        except PolicyExpressionError as error:
            line, col = self._relocate(element.value_position(name), value, error)
            self.problem(line, col, f"{element.tag} {name}: {error.message}")
            return None

    def text_template(self, element: Element) -> Any | None:
        text = element.text.strip()
        if not text.startswith(("@(", "@{")):
            return compile_template(text)
        value = element.text.rstrip()
        try:
            return compile_template(value)
        except PolicyExpressionError as error:
            line, col = self._relocate((element.text_line, element.text_col), value, error)
            self.problem(line, col, f"<{element.tag}>: {error.message}")
            return None

    def constant(self, element: Element, name: str) -> str | None:
        value = element.attributes[name]
        if value.startswith(("@(", "@{")):
            self.at_value(element, name, f"{element.tag} {name}: policy expressions are not "
                          "allowed here")
            return None
        return value

    def boolean(self, element: Element, name: str, default: bool, *,
                strict: bool = False) -> bool | None:
        """The attribute as a bool; on a bad value a problem, and None when ``strict``."""
        if name not in element.attributes:
            return default
        value = element.attributes[name]
        result = _TRUE_FALSE.get(value.strip().lower())
        if result is None:
            self.at_value(element, name, f"{element.tag} {name}: expected \"true\" or "
                          f"\"false\", not {value!r}")
            return None if strict else default
        return result

    def status_code(self, element: Element, name: str, *, expression: bool) -> Any | None:
        value = element.attributes[name]
        if expression and value.startswith(("@(", "@{")):
            compiled = self.template(element, name)
            if compiled is not None and compiled.result_type not in ("int", "string"):
                self.at_value(element, name, f"{element.tag} {name}: the expression must be "
                              f"an int, not {compiled.result_type}")
                return None
            return compiled
        text = value.strip()
        # A final response: 1xx are interim answers, which HTTP never ends a request with.
        if not (text.isascii() and text.isdigit()) or not 200 <= int(text) <= 599:
            self.at_value(element, name, f"{element.tag} {name}: {value!r} is not an HTTP "
                          "status code for a response (200-599)")
            return None
        return int(text)

    def header_name(self, element: Element, name: str) -> bytes | None:
        value = element.attributes[name].strip()
        if not s.HEADER_NAME.match(value):
            self.at_value(element, name, f"{element.tag} {name}: {value!r} is not a valid "
                          "header name")
            return None
        encoded = value.lower().encode()
        if encoded in s.RESERVED_HEADERS:
            self.at_value(element, name, f"{element.tag} {name}: '{value}' is managed by the "
                          "gateway and cannot be set by a policy")
            return None
        return encoded

    def values(self, element: Element) -> list[Any] | None:
        """The ``<value>`` children (set-header, check-header)."""
        self.no_text(element)
        out: list[Any] = []
        ok = True
        for child in element.children:
            if child.tag != "value":
                self.at_element(child, f"<{element.tag}> takes only <value> children "
                                f"(found <{child.tag}>)")
                ok = False
                continue
            self.attributes(child, set())
            for grandchild in child.children:
                self.at_element(grandchild, f"<value> takes no child elements (found "
                                f"<{grandchild.tag}>)")
                ok = False
            compiled = self.text_template(child)
            if compiled is None:
                ok = False
                continue
            if compiled.is_constant and s._BAD_VALUE.search(compiled.value):
                self.at_text(child, "a header value cannot contain control characters "
                             "(CR, LF, NUL...)")
                ok = False
                continue
            out.append(compiled)
        return out if ok else None


def _hint(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- statement builders ---------------------------------------------------------------------


def _choose(c: _Compiler, el: Element, section: str, path: str, common: dict) -> Any:
    c.attributes(el, set())
    c.no_text(el)
    branches: list[tuple[Any, list[s.Statement]]] = []
    otherwise: list[s.Statement] | None = None
    ok = True
    for child, child_path in c.children_paths(el, path):
        if child.tag == "when":
            if otherwise is not None:
                c.at_element(child, "<when> must come before <otherwise>")
                ok = False
            c.no_text(child)
            if not c.attributes(child, {"condition"}, required=("condition",)) and \
                    "condition" not in child.attributes:
                ok = False
                c.statements(child, section, child_path)
                continue
            condition = _condition(c, child)
            body = c.statements(child, section, child_path)
            if condition is None:
                ok = False
            else:
                branches.append((condition, body))
        elif child.tag == "otherwise":
            if otherwise is not None:
                c.at_element(child, "<choose> has more than one <otherwise>")
                ok = False
            c.attributes(child, set())
            c.no_text(child)
            otherwise = c.statements(child, section, child_path)
        else:
            c.at_element(child, f"<choose> takes only <when> and <otherwise> children "
                         f"(found <{child.tag}>)")
            ok = False
    if not branches and ok:
        c.at_element(el, "<choose> needs at least one <when condition=\"...\">")
        ok = False
    return s.Choose(branches, otherwise, **common) if ok else None


def _condition(c: _Compiler, el: Element) -> Any | None:
    value = el.attributes["condition"]
    if not value.startswith(("@(", "@{")):
        c.at_value(el, "condition", "when condition must be a policy expression, "
                   "@(...) or @{...}, of type bool")
        return None
    compiled = c.template(el, "condition")
    if compiled is None:
        return None
    if compiled.result_type != "bool":
        c.at_value(el, "condition", f"when condition must be of type bool, not "
                   f"{compiled.result_type}")
        return None
    return compiled


def _return_response(c: _Compiler, el: Element, section: str, path: str, common: dict) -> Any:
    ok = c.attributes(el, set())
    c.no_text(el)
    steps: list[s.Statement] = []
    seen: dict[str, int] = {}
    for child, child_path in c.children_paths(el, path):
        if child.tag not in ("set-status", "set-header", "set-body"):
            c.at_element(child, f"<return-response> takes only <set-status>, <set-header> and "
                         f"<set-body> (found <{child.tag}>)")
            ok = False
            continue
        seen[child.tag] = seen.get(child.tag, 0) + 1
        if child.tag != "set-header" and seen[child.tag] > 1:
            c.at_element(child, f"<return-response> has more than one <{child.tag}>")
            ok = False
            continue
        child_common = dict(policy_id=child.attributes.get("id", ""), path=child_path,
                            scope=c.scope, line=child.line, col=child.col)
        step = _BUILDERS[child.tag](c, child, section, child_path, child_common)
        if step is None:
            ok = False
        else:
            steps.append(step)
    return s.ReturnResponse(steps, **common) if ok else None


def _set_status(c: _Compiler, el: Element, section: str, path: str, common: dict) -> Any:
    ok = c.attributes(el, {"code", "reason"}, required=("code",))
    c.no_content(el)
    code = c.status_code(el, "code", expression=True) if "code" in el.attributes else None
    reason = None
    if "reason" in el.attributes:
        reason = c.template(el, "reason")
        if reason is None:
            ok = False
        elif reason.is_constant and s._BAD_VALUE.search(reason.value):
            c.at_value(el, "reason", "set-status reason: control characters are not allowed")
            ok = False
    if code is None or not ok:
        return None
    return s.SetStatus(code, reason, **common)


def _set_header(c: _Compiler, el: Element, section: str, path: str, common: dict) -> Any:
    ok = c.attributes(el, {"name", "exists-action"}, required=("name",))
    name: bytes | None = None
    name_expr = None
    if "name" not in el.attributes:
        pass
    elif el.attributes["name"].startswith(("@(", "@{")):
        name_expr = c.template(el, "name")
    else:
        name = c.header_name(el, "name")
    action = "override"
    if "exists-action" in el.attributes:
        action = el.attributes["exists-action"].strip().lower()
        if action not in s.EXISTS_ACTIONS:
            c.at_value(el, "exists-action", f"set-header exists-action: "
                       f"{el.attributes['exists-action']!r} is not one of "
                       f"{', '.join(s.EXISTS_ACTIONS)}")
            ok = False
    values = c.values(el)
    if not ok or values is None or (name is None and name_expr is None):
        return None
    if action != "delete" and not values:
        c.at_element(el, "<set-header> needs at least one <value> (or "
                     "exists-action=\"delete\")")
        return None
    return s.SetHeader(name, name_expr, action, values, **common)


def _set_variable(c: _Compiler, el: Element, section: str, path: str, common: dict) -> Any:
    ok = c.attributes(el, {"name", "value"}, required=("name", "value"))
    c.no_content(el)
    name = c.constant(el, "name") if "name" in el.attributes else None
    if name is not None and not name.strip():
        c.at_value(el, "name", "set-variable name: the name is empty")
        name = None
    value = c.template(el, "value") if "value" in el.attributes else None
    if not ok or name is None or value is None:
        return None
    return s.SetVariable(name, value, **common)


def _set_body(c: _Compiler, el: Element, section: str, path: str, common: dict) -> Any:
    ok = c.attributes(el, set())
    for child in el.children:
        c.at_element(child, f"<set-body> takes text or an expression, not elements (found "
                     f"<{child.tag}>)")
        ok = False
    value = c.text_template(el)
    return s.SetBody(value, **common) if value is not None and ok else None


def _forward_request(c: _Compiler, el: Element, section: str, path: str, common: dict) -> Any:
    ok = c.attributes(el, {"timeout"})
    c.no_content(el)
    timeout: Any = None
    if "timeout" in el.attributes:
        value = el.attributes["timeout"]
        if value.startswith(("@(", "@{")):
            timeout = c.template(el, "timeout")
            if timeout is None:
                return None
            if timeout.result_type not in ("int", "long", "double", "string"):
                c.at_value(el, "timeout", f"forward-request timeout: the expression must be a "
                           f"number of seconds, not {timeout.result_type}")
                return None
        else:
            text = value.strip()
            if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 3600:
                c.at_value(el, "timeout", f"forward-request timeout: {value!r} is not a "
                           "number of seconds (1-3600)")
                return None
            timeout = float(int(text))
    return s.ForwardRequest(timeout, **common) if ok else None


def _check_header(c: _Compiler, el: Element, section: str, path: str, common: dict) -> Any:
    required = ("name", "failed-check-httpcode", "failed-check-error-message")
    ok = c.attributes(el, {*required, "ignore-case"}, required=required)
    attrs = el.attributes
    name = c.header_name(el, "name") if "name" in attrs else None
    status = c.status_code(el, "failed-check-httpcode", expression=False) \
        if "failed-check-httpcode" in attrs else None
    message = c.constant(el, "failed-check-error-message") \
        if "failed-check-error-message" in attrs else None
    ignore_case = c.boolean(el, "ignore-case", False, strict=True)
    values = c.values(el)
    if not ok or name is None or status is None or message is None or values is None or \
            ignore_case is None:
        return None
    return s.CheckHeader(name, status, message, ignore_case, values, **common)


def _validate_client_certificate(c: _Compiler, el: Element, section: str, path: str,
                                 common: dict) -> Any:
    switches = ("validate-revocation", "validate-trust", "validate-not-before",
                "validate-not-after", "ignore-error")
    ok = c.attributes(el, set(switches))
    flags = {name: c.boolean(el, name, name != "ignore-error", strict=True)
             for name in switches}
    c.no_text(el)
    identities: list[s.Identity] = []
    seen_identities = False
    for child in el.children:
        if child.tag != "identities":
            c.at_element(child, f"<validate-client-certificate> takes only <identities> "
                         f"(found <{child.tag}>)")
            ok = False
            continue
        if seen_identities:
            c.at_element(child, "<validate-client-certificate> has more than one <identities>")
            ok = False
            continue
        seen_identities = True
        c.attributes(child, set())
        c.no_text(child)
        count = 0
        for item in child.children:
            if item.tag != "identity":
                c.at_element(item, f"<identities> takes only <identity> elements (found "
                             f"<{item.tag}>)")
                ok = False
                continue
            count += 1
            if count == MAX_IDENTITIES + 1:
                c.at_element(item, f"at most {MAX_IDENTITIES} <identity> elements are "
                             "allowed in <identities>")
                ok = False
            identity = _identity(c, item)
            if identity is None:
                ok = False
            else:
                identities.append(identity)
    if not ok or None in flags.values():
        return None
    return s.ValidateClientCertificate(
        validate_revocation=flags["validate-revocation"],
        validate_trust=flags["validate-trust"],
        validate_not_before=flags["validate-not-before"],
        validate_not_after=flags["validate-not-after"],
        ignore_error=flags["ignore-error"], identities=identities, **common)


def _identity(c: _Compiler, el: Element) -> s.Identity | None:
    ok = c.attributes(el, set(_IDENTITY_ATTRIBUTES))
    c.no_content(el)
    given = {name: value for name, value in el.attributes.items()
             if name in _IDENTITY_ATTRIBUTES}
    if not given:
        c.at_element(el, "<identity> needs at least one of " + ", ".join(_IDENTITY_ATTRIBUTES))
        return None
    fields: dict[str, Any] = {}
    for name in given:
        value = c.constant(el, name)
        if value is None:
            ok = False
            continue
        key = name.replace("-", "_")
        if name in ("thumbprint", "issuer-thumbprint"):
            normalized = s.normalize_thumbprint(value)
            if not _HEX40.match(normalized):
                c.at_value(el, name, f"identity {name}: {value!r} is not a SHA-1 thumbprint "
                           "(40 hexadecimal digits)")
                ok = False
                continue
            fields[key] = normalized
        elif name == "serial-number":
            serial = s.parse_serial(value)
            if serial is None:
                c.at_value(el, name, f"identity serial-number: {value!r} is not a hexadecimal "
                           "serial number")
                ok = False
                continue
            fields[key] = serial
        elif name in ("subject", "issuer-subject"):
            dn = s.canonical_dn(value)
            if not dn:
                c.at_value(el, name, f"identity {name}: {value!r} is not a distinguished name "
                           "such as \"CN=client, O=example, C=US\"")
                ok = False
                continue
            fields[key] = dn
        elif name == "issuer-certificate-id":
            if c.certificate_ids is not None and value not in c.certificate_ids:
                known = ", ".join(sorted(c.certificate_ids)) or "none"
                c.at_value(el, name, f"identity issuer-certificate-id: no [[certificate]] has "
                           f"the id {value!r} (known: {known})")
                ok = False
                continue
            fields[key] = value
        else:
            if not value.strip():
                c.at_value(el, name, f"identity {name}: the value is empty")
                ok = False
                continue
            fields[key] = value.strip().casefold()
    if "issuer-certificate-id" in given and ({"issuer-subject", "issuer-thumbprint"} & set(given)):
        c.at_name(el, "issuer-certificate-id", "identity issuer-certificate-id cannot be "
                  "combined with issuer-subject or issuer-thumbprint")
        ok = False
    if not ok:
        return None
    return s.Identity(attributes=dict(given), **fields)


_BUILDERS = {
    "choose": _choose,
    "return-response": _return_response,
    "set-status": _set_status,
    "set-header": _set_header,
    "set-variable": _set_variable,
    "set-body": _set_body,
    "forward-request": _forward_request,
    "check-header": _check_header,
    "validate-client-certificate": _validate_client_certificate,
}

__all__ = ["MAX_IDENTITIES", "SECTIONS", "PolicyDocument", "load_policy_file", "parse_policy",
           "protect_expressions"]
