"""The built-in ``echo:`` backend: answers with a JSON description of the request it received.

It is what ``make run`` serves and what the deadlock matrix and the bench talk to, so it must
read request bodies of any size in constant memory (it hashes them as they stream by) and be
able to produce large downloads cheaply (``?size=N`` streams one shared 64 KiB block).

Query parameters:

- ``status=NNN`` answers with that status (200-599);
- ``size=N`` answers with an N-byte body (byte ``i`` is ``i % 256``) and puts the JSON
  summary in the ``x-echo`` response header instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from json.encoder import c_make_encoder, encode_basestring_ascii
from urllib.parse import parse_qs

from cryptography import x509

from tlsgate.certs.identity import certificate_names
from tlsgate.http.base import remember_field
from tlsgate.http.messages import Headers, Request, Response

CHUNK_SIZE = 65536
# Position-independent pattern: CHUNK_SIZE is a multiple of 256, so every chunk is identical
# and a client can check any byte of a download without knowing the chunk boundaries.
_PATTERN = bytes(range(256)) * (CHUNK_SIZE // 256)
_BODYLESS_STATUSES = (204, 304)


class EchoBackend:
    """Describes each request: method, target, headers, body size and hash, certificate."""

    #: Connection descriptions remembered (FIFO).
    CONNECTIONS_REMEMBERED = 1024

    def __init__(self) -> None:
        # What describes a connection (its certificate by identity, the certificate's
        # origin, the TLS parameters) -> (certificate, JSON text of the connection part):
        # encoded once per client and TLS setup, not per request or per connection.
        self._connection_json: dict[tuple, tuple[object, str]] = {}

    async def handle(self, request: Request) -> Response:
        if request.body.exhausted:       # nothing to read (a GET): no coroutines for it
            body_bytes, body_sha256 = 0, _EMPTY_SHA256
        else:
            body_bytes, body_sha256 = await _digest_body(request)
        try:
            status, size = _parse_options(request.query)
        except ValueError as exc:
            return Response.json_error(400, f"Bad Request: {exc}")
        if size is not None or status in _BODYLESS_STATUSES:
            summary = {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "headers": headers_to_json(request.headers),
                "body_bytes": body_bytes,
                "body_sha256": body_sha256,
                "http_version": request.http_version,
            }
            summary.update(_describe_connection(request))
            return _download_response(status, size or 0, summary)
        # json.dumps of the whole summary, written out: the connection's part is encoded
        # once per connection, each header field once per process (see _headers_text)
        text = "".join((
            '{"method": ', _quote(request.method),
            ', "path": ', _quote(request.path),
            ', "query": ', _quote(request.query),
            ', "headers": ', _headers_text(request.headers),
            ', "body_bytes": ', str(body_bytes),
            ', "body_sha256": ', _quote(body_sha256),
            ', "http_version": ', _quote(request.http_version),
            ", ", self._connection_text(request)[1:]))
        data = text.encode()
        return Response(status, [(b"content-type", b"application/json"),
                                 (b"content-length", str(len(data)).encode())], data)

    def _connection_text(self, request: Request) -> str:
        """``json.dumps(_describe_connection(request))``, remembered by what it reads. The
        certificate is keyed by identity (the TLS layer interns certificates, so a returning
        client brings the same object); the entry holds it, so its id is not reused."""
        info = request.connection
        certificate = info.client_certificate
        key = (id(certificate), request.certificate_origin, info.tls_version, info.sni,
               info.alpn, info.cipher, info.session_resumed)
        entry = self._connection_json.get(key)
        if entry is not None and entry[0] is certificate:
            return entry[1]
        text = _dumps(_describe_connection(request))
        if len(self._connection_json) >= self.CONNECTIONS_REMEMBERED:
            del self._connection_json[next(iter(self._connection_json))]
        self._connection_json[key] = (certificate, text)
        return text

    async def aclose(self) -> None:
        """Nothing pooled: present so every backend closes the same way."""


async def _digest_body(request: Request) -> tuple[int, str]:
    """Consume the body chunk by chunk, keeping only its length and SHA-256."""
    chunk = await request.body.read_chunk()
    if not chunk:
        return 0, _EMPTY_SHA256
    digest = hashlib.sha256()
    count = 0
    while chunk:
        digest.update(chunk)
        count += len(chunk)
        chunk = await request.body.read_chunk()
    return count, digest.hexdigest()


_EMPTY_SHA256 = hashlib.sha256().hexdigest()


def _json_dumps_function():
    """``json.dumps`` with default settings, without building an encoder on every call: the
    C encoder json.dumps makes internally, made once (without the circular-reference check,
    which summaries, trees of str/int/dict/list, never need). Plain json.dumps where the C
    encoder is missing."""
    if c_make_encoder is None:
        return json.dumps

    def unsupported(value):
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    encode = c_make_encoder(None, unsupported, encode_basestring_ascii, None, ": ", ", ",
                            False, False, True)
    return lambda value: "".join(encode(value, 0))


_dumps = _json_dumps_function()


def _parse_options(query: str) -> tuple[int, int | None]:
    """``status`` and ``size`` from the query string; ValueError names the bad one."""
    if not query:
        return 200, None
    params = parse_qs(query, keep_blank_values=True)
    status = _int_param(params, "status", 200, 599)
    size = _int_param(params, "size", 0, 1 << 40)
    return (200 if status is None else status), size


def _int_param(params: dict[str, list[str]], name: str, low: int, high: int) -> int | None:
    values = params.get(name)
    if not values:
        return None
    raw = values[-1]
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {raw!r}")
    return int(raw)


def _download_response(status: int, size: int, summary: dict) -> Response:
    """A streamed ``size``-byte body, the summary moved to the ``x-echo`` header."""
    if status in _BODYLESS_STATUSES:
        size = 0
    headers = [(b"content-type", b"application/octet-stream"),
               # ensure_ascii (the default) escapes control characters: header-safe.
               (b"x-echo", json.dumps(summary, separators=(",", ":")).encode())]
    body = _pattern_stream(size) if size else b""
    # 204 and 304 carry no Content-Length at all (RFC 9110 §8.6).
    return Response(status, headers, body,
                    content_length=None if status in _BODYLESS_STATUSES else size)


async def _pattern_stream(size: int) -> AsyncIterator[bytes]:
    """``size`` bytes of the pattern, in CHUNK_SIZE pieces that share one buffer."""
    full, rest = divmod(size, CHUNK_SIZE)
    for _ in range(full):
        yield _PATTERN
    if rest:
        yield _PATTERN[:rest]


#: Header field -> its JSON member text ('"name": "value"'), bounded like the HTTP layer's
#: field memos: a client's usual fields are encoded once, not on every request.
_FIELD_TEXT: dict[tuple[bytes, bytes], str] = {}
_quote = encode_basestring_ascii         # a str as json.dumps writes it (ensure_ascii)


def _headers_text(headers: Headers) -> str:
    """``json.dumps(headers_to_json(headers))``, from remembered member texts; a repeated
    name (a list in the JSON) takes json.dumps itself."""
    members = []
    for field in headers:
        text = _FIELD_TEXT.get(field)
        if text is None:
            text = _quote(field[0].decode("latin-1")) + ": " + \
                _quote(field[1].decode("latin-1"))
            remember_field(_FIELD_TEXT, field, text)
        members.append(text)
    if len({field[0] for field in headers}) != len(headers):
        return _dumps(headers_to_json(headers))
    return "{" + ", ".join(members) + "}"


def headers_to_json(headers: Headers) -> dict[str, str | list[str]]:
    """Headers as a JSON object; a repeated name maps to the list of its values.

    Latin-1 decoding is lossless, so the bytes a client sent can always be recovered.
    """
    out: dict[str, str | list[str]] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        previous = out.get(name)
        if previous is None:
            out[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            out[name] = [previous, value]
    return out


def describe_certificate(certificate: x509.Certificate | None) -> dict[str, str] | None:
    """Subject, thumbprint and serial the way API Management's policies print them."""
    if certificate is None:
        return None
    names = certificate_names(certificate)
    return {"subject": names.subject, "issuer": names.issuer,
            "thumbprint": names.thumbprint, "serial": names.serial}


def _describe_connection(request: Request) -> dict[str, object]:
    return {
        # The certificate known on the connection: echoing must never be what makes the
        # gateway ask for one late (a policy that reads it does that).
        "client_certificate": describe_certificate(request.connection.client_certificate),
        "certificate_origin": request.certificate_origin,
        "tls": _describe_tls(request),
    }


def _describe_tls(request: Request) -> dict[str, object]:
    info = request.connection
    return {"version": info.tls_version, "sni": info.sni, "alpn": info.alpn,
            "cipher": info.cipher, "session_resumed": info.session_resumed}
