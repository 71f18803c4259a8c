"""What the HTTP adapters need from the connection, and what they give the pipeline.

The adapters (``h1``, ``h2``) sit between a sans-IO protocol machine (h11, h2) and the request
pipeline. They never touch sockets or TLS: they write plaintext through a
:class:`PlaintextChannel`, which the asyncio connection implements on top of the TLS session.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from tlsgate.http.messages import Headers, Request


class PlaintextChannel(Protocol):
    """The connection as the HTTP adapters see it."""

    def write(self, data: bytes) -> None: ...          # encrypt and send
    def close(self) -> None: ...                        # close_notify, then FIN
    def abort(self) -> None: ...                        # drop at once (no close_notify)
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    async def drain(self) -> None: ...                  # wait while the socket is backed up
    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...
    def request_started(self) -> None: ...              # for the idle timer
    def request_finished(self) -> None: ...
    async def client_certificate(self, request: Request) -> x509.Certificate | None: ...


def attach_certificate_source(request: Request, channel: PlaintextChannel) -> None:
    """Route certificate reads through the channel where the handshake asked for nothing,
    so that the first read can fetch the certificate late (tlsgate.server.late_certificate).
    Elsewhere the handshake's certificate is the answer and reads cost nothing."""
    settings = request.connection.host_settings
    if settings is not None and not settings.negotiate_client_certificate:
        request.certificate_source = channel.client_certificate


class ResponseSink(Protocol):
    """Where the pipeline writes one response."""

    started: bool

    async def start(self, status: int, headers: Headers, *, end_stream: bool = False,
                    reason: bytes | None = None) -> None: ...
    async def write(self, data: bytes) -> None: ...
    async def end(self, data: bytes = b"") -> None: ...     # last body bytes, then the end
    def abort(self) -> None: ...                         # the response cannot be completed


RequestHandler = Callable[[Request, ResponseSink], Awaitable[None]]


@dataclass(frozen=True)
class HTTPLimits:
    max_header_size: int = 16384
    max_concurrent_streams: int = 100
    body_high_water: int = 262144      # bytes buffered per request body before reading stops
    h2_stream_window: int = 1048576    # HTTP/2 per-stream receive window
    h2_connection_window: int = 16777216


SERVER_HEADER = (b"server", b"tlsgate")

# Request body bytes read and dropped after the response went out before the body ended, so
# that a client which only reads once it has sent everything still gets the response (both
# HTTP versions). Past this the connection (HTTP/1.1) or the stream (HTTP/2) is cut off.
DISCARD_LIMIT = 4 * 1024 * 1024


# Response fields as h11 sends them: a token name; a value of any bytes but NUL, CR and LF,
# spaces and tabs only inside (RFC 9110 §5.5, with obs-text: a backend's or a policy's UTF-8
# value passes). Both adapters check what the pipeline hands them against these.
FIELD_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")


#: Process-wide memos of per-field answers (a field's check or encoding depends on the field
#: alone, so a client's or backend's usual fields are worked out once): their bounds.
FIELD_MEMO_ENTRIES = 4096
FIELD_MEMO_MAX_BYTES = 256


def remember(memo: dict, key: object, answer: object, size: int) -> None:
    """Keep ``answer`` for ``key`` (``size`` bytes of input) in ``memo``: long inputs are not
    kept, a full memo is emptied (no eviction bookkeeping on the hot path)."""
    if size <= FIELD_MEMO_MAX_BYTES:
        if len(memo) >= FIELD_MEMO_ENTRIES:
            memo.clear()
        memo[key] = answer


def remember_field(memo: dict, field: tuple[bytes, bytes], answer: object) -> None:
    """:func:`remember` for a memo keyed by a field."""
    remember(memo, field, answer, len(field[0]) + len(field[1]))


def comma_tokens(value: bytes) -> list[bytes]:
    """The lowercased tokens of a comma-separated field value (``Connection``), empty ones
    included."""
    return [token.strip(b" \t") for token in value.lower().split(b",")]


class ResponseFramingError(Exception):
    """The handler wrote a response that cannot go on the wire as it is (an illegal field,
    a head twice, more or less body than declared): the stream or connection is dropped."""
