"""HTTP/2 header blocks without h2's per-field pipelines: inbound checks and outbound HPACK.

Both are hot (once per request) and both were mostly Python overhead in h2 and hpack:

- :func:`read_request` (checking and reading) and :func:`trailer_problem` judge a received
  header block in one pass, where h2's ``validate_inbound_headers`` chains eight generators
  per field. They check what h2 checks (RFC 9113 §8.2 and §8.3) and a little more, because
  an HTTP/2 request may be forwarded to an HTTP/1.1 backend: a field name must be a
  lowercase RFC 9110 token, the method a token, and ``:path`` origin-form (``*`` for
  OPTIONS). A malformed request is a stream error (RFC 9113 §8.1.1: RST_STREAM with
  PROTOCOL_ERROR), not a connection error.
- :class:`ResponseFieldEncoder` encodes response heads without HPACK's dynamic table, as nginx
  does: a field's bytes then depend on the field alone and are memoized across connections.
  Each field costs a few bytes more on the wire than dynamic-table indexing would; the
  per-field table search and upkeep are gone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import hpack
from hpack.hpack import INDEX_NEVER, INDEX_NONE

from tlsgate.http.base import FIELD_NAME, FIELD_VALUE, remember_field

_LOWERCASE_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-z]+")
_REQUEST_PSEUDO_FIELDS = frozenset((b":method", b":scheme", b":authority", b":path"))
# Connection-specific fields are malformed in HTTP/2 (RFC 9113 §8.2.2); TE only as "trailers".
CONNECTION_FIELDS = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                b"transfer-encoding", b"upgrade"))

Header = tuple[bytes, bytes]


def _field_problem(name: bytes, value: bytes) -> str | None:
    """Why one field is malformed on its own (whatever the others are), or None."""
    if name[:1] == b":":
        if name not in _REQUEST_PSEUDO_FIELDS:
            return f"pseudo-header {name.decode('latin-1')!r} not allowed in a request"
        if not FIELD_VALUE.fullmatch(value):
            return f"illegal value in {name.decode()!r}"
        if name == b":method" and not FIELD_NAME.fullmatch(value):   # not a token
            return "illegal :method"
        return None
    if not _LOWERCASE_TOKEN.fullmatch(name):
        return f"illegal field name {name!r}"
    if name in CONNECTION_FIELDS:
        return f"connection-specific field {name.decode()!r}"
    if name == b"te" and value.lower() != b"trailers":
        return "TE other than 'trailers'"
    if not FIELD_VALUE.fullmatch(value):
        return f"illegal value in field {name.decode()!r}"
    return None


class MalformedHeaders(Exception):
    """A header block breaks RFC 9113 §8.2/§8.3 (or the forwarding rules above)."""


@dataclass(slots=True)
class RequestHead:
    """What a well-formed request header block says, read in the pass that checked it."""

    method: bytes
    path: bytes                   # b"" for CONNECT
    authority: bytes              # :authority, else Host, else b""
    fields: list[Header]          # the regular fields, in order
    content_length: int | None    # digits only; repeated values agree
    # The head's size as the HTTP/1.1 adapter measures a request head (method, target, 12;
    # name + value + 4 per field, :authority as a Host field), so that max_header_size
    # answers 431 alike on both versions. Never more than the SETTINGS_MAX_HEADER_LIST_SIZE
    # count (+32 per field, RFC 9113 §6.5.2), so a client within the advertised limit passes.
    head_size: int


def read_request(headers: Iterable[Header]) -> RequestHead:
    """Check a request header block and read it, in one pass; raises MalformedHeaders."""
    pseudo: dict[bytes, bytes] = {}
    fields: list[Header] = []
    host = content_length = None
    size = 0
    checked = _checked_fields
    for field in headers:
        name, value = field
        if field not in checked:
            _check_field(field)
        if name[:1] == b":":
            if fields:
                raise MalformedHeaders(
                    f"pseudo-header {name.decode('latin-1')!r} after a regular field")
            if name in pseudo:
                raise MalformedHeaders(f"two {name.decode()!r} pseudo-headers")
            pseudo[name] = value
            continue
        if name == b"host":
            if host is not None:
                raise MalformedHeaders("two Host fields")
            host = value
        elif name == b"content-length":
            # 1*DIGIT (RFC 9110 §8.6): no sign, no "5_0"; at most 18 digits (int() of very
            # long strings fails); repeated, the values must agree.
            if not value.isdigit() or len(value) > 18 or \
                    content_length not in (None, int(value)):
                raise MalformedHeaders(f"bad Content-Length {value[:40]!r}")
            content_length = int(value)
        fields.append((name, value))    # plain tuples, as the HTTP/1.1 adapter gives
        size += len(name) + len(value) + 4
    problem = _pseudo_fields_problem(pseudo, host)
    if problem is not None:
        raise MalformedHeaders(problem)
    authority = pseudo.get(b":authority") or host or b""
    method, path = pseudo[b":method"], pseudo.get(b":path", b"")
    size += len(method) + len(path) + 12
    if host is None and authority:
        size += len(authority) + 8      # "host" + value + 4, as HTTP/1.1 would carry it
    return RequestHead(method, path, authority, fields, content_length, size)


def request_problem(headers: Iterable[Header]) -> str | None:
    """Why a request header block is malformed, or None if it is well-formed."""
    try:
        read_request(headers)
    except MalformedHeaders as exc:
        return str(exc)
    return None


#: Fields found well-formed on their own: a client's usual fields (``:path`` aside) are
#: checked once, not on every request (see remember_field).
_checked_fields: dict[Header, bool] = {}


def _check_field(field: Header) -> None:
    problem = _field_problem(*field)
    if problem is not None:
        raise MalformedHeaders(problem)
    if field[0] != b":path":        # paths vary too much to be worth remembering
        remember_field(_checked_fields, field, True)


def _pseudo_fields_problem(pseudo: dict[bytes, bytes], host: bytes | None) -> str | None:
    method = pseudo.get(b":method")
    if method is None:
        return "no :method"
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo:
            return "CONNECT with :scheme or :path"
    else:
        if b":scheme" not in pseudo:
            return "no :scheme"
        path = pseudo.get(b":path")
        if not path:
            return "no :path" if path is None else "empty :path"
        if path[0] != 47 and not (path == b"*" and method == b"OPTIONS"):   # 47: "/"
            return ":path not in origin form"
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        return "neither :authority nor Host"
    if authority is not None and host is not None and authority != host:
        return ":authority and Host differ"
    return None


def trailer_problem(headers: Iterable[Header]) -> str | None:
    """Why a trailer block (header fields after the body) is malformed, or None."""
    for name, value in headers:
        if name[:1] == b":":
            return f"pseudo-header {name.decode('latin-1')!r} in trailers"
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
    return None


# -- outbound -------------------------------------------------------------------------------------

#: Memoized encodings, shared by every connection (see remember_field).
_encoded_fields: dict[Header, bytes] = {}


class ResponseFieldEncoder(hpack.Encoder):
    """hpack's encoder with the dynamic table left empty, for the fields we send.

    Fields the static table holds whole become one index byte; the rest are "literal without
    indexing" (RFC 7541 §6.2.2), naming a static-table entry where one fits, the value
    Huffman-coded as hpack does. Sensitive fields (``NeverIndexedHeaderTuple``) become "never
    indexed" literals and are never memoized. A table size change the peer announced in its
    SETTINGS is still signalled first (RFC 7541 §4.2), as hpack does. Literals are always
    Huffman-coded (h2 never asks otherwise).
    """

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE. The next block starts with the updates
        RFC 7541 §4.2 asks for, at most two: the smallest size since the last block, then
        the final one (hpack keeps one per change, without bound, and loses a pending one
        when the same value comes twice)."""
        self.header_table.maxsize = value
        changes = self.table_size_changes
        smallest = min(changes[0], value) if changes else value
        self.table_size_changes = [smallest, value] if smallest != value else [value]
        self.header_table.resized = True

    def encode(self, headers, huffman: bool = True) -> bytes:
        parts = []
        if self.header_table.resized:
            parts.append(self._encode_table_size_change())
            self.header_table.resized = False
        for header in headers:
            if isinstance(header, hpack.HeaderTuple) and not header.indexable:
                parts.append(self._encode_field(header[0], header[1], INDEX_NEVER))
                continue
            field = (header[0], header[1])
            encoded = _encoded_fields.get(field)
            if encoded is None:
                encoded = self._encode_field(field[0], field[1], INDEX_NONE)
                remember_field(_encoded_fields, field, encoded)
            parts.append(encoded)
        return b"".join(parts)

    def _encode_field(self, name: bytes, value: bytes, index_bits: bytes) -> bytes:
        # Nothing is ever added to the dynamic table, so a match is a static-table entry.
        match = self.header_table.search(name, value)
        if match is None:
            return self._encode_literal(name, value, index_bits, True)
        index, _, perfect = match
        if perfect is not None:
            return self._encode_indexed(index)
        return self._encode_indexed_literal(index, value, index_bits, True)
