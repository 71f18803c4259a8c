"""Protocol-neutral request and response records.

The HTTP/1.1 and HTTP/2 adapters both turn wire events into a :class:`Request`; the request
pipeline and the backends only ever see these records, so one pipeline serves both protocols.

Header names are lowercase ``bytes``, values ``bytes``, in wire order (duplicates kept), the
form h11 and h2 already use, so no per-request re-encoding happens on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from cryptography import x509

Headers = list[tuple[bytes, bytes]]
#: The standard reason phrase of each status code (a dict: HTTPStatus(code) is an Enum call).
STATUS_PHRASES: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
_log = logging.getLogger("tlsgate.spool")


@dataclass
class ConnectionInfo:
    """What the TLS layer knows about the connection a request came on."""

    client_address: tuple[str, int]
    sni: str | None = None
    tls_version: str | None = None          # "TLSv1.2" | "TLSv1.3"
    alpn: str | None = None                 # "h2" | "http/1.1" | None
    cipher: str | None = None
    session_resumed: bool = False
    hostname: str | None = None             # name of the [[hostname]] entry chosen by SNI
    # Certificate the client presented in the TLS handshake (or the resumed session's).
    handshake_certificate: x509.Certificate | None = None
    handshake_chain: tuple[x509.Certificate, ...] = ()
    # Set when a late request (renegotiation / post-handshake auth) ended on this
    # connection: "renegotiation" | "post_handshake", and what it brought (maybe None).
    late_origin: str | None = None
    late_certificate: x509.Certificate | None = None
    late_chain: tuple[x509.Certificate, ...] = ()
    # Hostname settings (tlsgate.config.model.HostnameSettings) chosen by SNI.
    host_settings: object | None = None
    # The policy engine's view of the certificate, kept for the connection's later requests:
    # (certificate, verifier, tlsgate.policy.model.CertificateView).
    certificate_view: tuple | None = None

    @property
    def client_certificate(self) -> x509.Certificate | None:
        """The certificate known on this connection now, without asking for one."""
        return self.handshake_certificate or self.late_certificate

    @property
    def client_chain(self) -> tuple[x509.Certificate, ...]:
        return self.handshake_chain if self.handshake_certificate else self.late_chain

    @property
    def certificate_origin(self) -> str:
        """How :attr:`client_certificate` came: "handshake", "renegotiation",
        "post_handshake", or "none" while no certificate is known."""
        if self.handshake_certificate is not None:
            return "handshake"
        if self.late_certificate is not None:
            return self.late_origin or "none"
        return "none"


READ_PIECE = 65536


class RequestBody:
    """The request body as a stream of chunks, fed by the connection, read by one consumer.

    The connection calls :meth:`feed` and :meth:`finish` (or :meth:`fail`); the consumer
    iterates with ``async for``. Flow control: once more than ``high_water`` bytes wait
    unread, ``pause()`` is called (the connection stops reading its socket / withholds
    HTTP/2 window); ``resume()`` is called when the consumer has drained them.

    ``on_first_read`` runs when the consumer first asks for data (HTTP/1.1 sends
    ``100 Continue`` there); ``on_consumed(n)`` after each chunk handed out (HTTP/2 opens its
    flow-control window there). Past ``limit`` bytes the body fails with
    :class:`BodyTooLarge` and ``pause()`` stops the connection reading.
    """

    __slots__ = ("content_length", "_chunks", "_buffered", "_done", "_error", "_waiter",
                 "_pause", "_resume", "_paused", "high_water", "received", "_consumed",
                 "limit", "on_first_read", "on_consumed", "_started", "_spool",
                 "_complete_waiter", "starved_since")

    def __init__(self, content_length: int | None, *, high_water: int = 262144,
                 pause: Callable[[], None] | None = None,
                 resume: Callable[[], None] | None = None) -> None:
        self.content_length = content_length
        self.high_water = high_water
        self.received = 0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._consumed = False
        self._started = False
        self.limit: int | None = None
        self.on_first_read: Callable[[], None] | None = None
        self.on_consumed: Callable[[int], None] | None = None
        self._spool = None                     # tlsgate.http.spool.Spool while spooling
        self._complete_waiter: asyncio.Future[None] | None = None
        #: Loop time since which a reader has been waiting for bytes only the client can
        #: send (None: nobody waits). The connection fails a body starved for longer than
        #: ``idle_timeout`` with :class:`BodyTimeout`.
        self.starved_since: float | None = None

    @classmethod
    def empty(cls) -> RequestBody:
        body = cls(0)
        body._done = True
        return body

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def exhausted(self) -> bool:
        """Complete, unfailed and nothing left to read: read_chunk() would return b""."""
        return self._done and self._error is None and not self._chunks and self._spool is None

    def feed(self, data: bytes) -> None:
        if not data or self._error is not None:
            return
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self.fail(BodyTooLarge(self.limit))
            if self._pause and not self._paused:
                self._paused = True
                self._pause()
            return
        if self._spool is not None:
            try:
                self._spool.write(data)
            except BodyTooLarge as error:
                self.fail(error)
                return
            self._wake()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self.high_water and not self._paused and self._pause:
            self._paused = True
            self._pause()
        if self._complete_waiter is not None:
            # wait_buffered() goes on waiting, but the client is not silent
            self.starved_since = self._complete_waiter.get_loop().time()
        elif self._waiter is not None:
            self.starved_since = None       # the reader has its bytes (it runs later)
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        waiter = self._complete_waiter
        if waiter is not None and not waiter.done() and (
                self._done or self._error is not None or self._buffered > self.high_water):
            waiter.set_result(None)

    # -- on-demand certificate strategies (tlsgate.server.late_certificate) ---------------

    def set_high_water(self, high_water: int) -> None:
        """Change how much may wait unread before the connection stops reading."""
        self.high_water = high_water
        if self._paused and self._buffered <= high_water and self._resume:
            self._paused = False
            self._resume()
        elif not self._paused and self._buffered > high_water and self._pause:
            self._paused = True
            self._pause()

    def start_spooling(self, spool) -> None:
        """From now on bytes go to ``spool`` and reading never pauses for them."""
        for chunk in self._chunks:
            spool.write(chunk)
        self._chunks.clear()
        self._buffered = 0
        self._spool = spool
        if self._paused and self._resume:
            self._paused = False
            self._resume()

    def close_spool(self) -> None:
        """Remove the spool (and its file); returns nothing, logs what went to disk."""
        spool = self._spool
        if spool is not None:
            if spool.spilled:
                _log.info("spooled %d body bytes to %s while the client certificate was "
                          "fetched; removed", spool.spilled, spool.path)
            spool.close()

    @property
    def spool(self):
        return self._spool

    @property
    def error(self) -> BaseException | None:
        return self._error

    async def wait_buffered(self) -> None:
        """Until the body is complete, failed, or more than ``high_water`` bytes wait."""
        while not (self._done or self._error is not None or self._buffered > self.high_water):
            loop = asyncio.get_running_loop()
            self._complete_waiter = loop.create_future()
            self.starved_since = loop.time()
            try:
                await self._complete_waiter
            finally:
                self._complete_waiter = None
                self.starved_since = None

    async def read_chunk(self) -> bytes:
        """Next chunk, or ``b""`` at the end of the body. Raises the error given to fail()."""
        if not self._started:
            self._started = True
            if self.on_first_read is not None:
                self.on_first_read()
        while True:
            if self._spool is not None:
                data = self._spool.read(READ_PIECE)
                if data:
                    return data
            chunks = self._chunks
            if chunks:
                if len(chunks) == 1:
                    data = chunks.pop()
                else:
                    # Small chunks (HTTP/2 DATA frames are 16 KiB) are joined into pieces of
                    # about READ_PIECE bytes: few large writes downstream, without copying
                    # everything buffered (up to a whole HTTP/2 window) at once.
                    take, size = 0, 0
                    while take < len(chunks) and size < READ_PIECE:
                        size += len(chunks[take])
                        take += 1
                    data = chunks[0] if take == 1 else b"".join(chunks[:take])
                    del chunks[:take]
                self._buffered -= len(data)
                if self.on_consumed is not None:
                    self.on_consumed(len(data))
                if self._paused and self._resume and self._buffered <= self.high_water:
                    self._paused = False
                    self._resume()
                return data
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            self.starved_since = loop.time()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self.starved_since = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._consumed:
            raise RuntimeError("request body already consumed")
        self._consumed = True
        while chunk := await self.read_chunk():
            yield chunk

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])


class BodyTooLarge(Exception):
    """The request body passed its limit; the answer is 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class BodyTimeout(Exception):
    """The client sent no byte of a request body it owes for ``idle_timeout`` seconds while
    the gateway was reading; the answer is 408 and the connection closes."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no request body bytes for {seconds:g} s")
        self.seconds = seconds


class HTTP11Required(Exception):
    """The request needs a late client certificate, which HTTP/2 forbids (RFC 9113 §9.2.1,
    RFC 8740): its stream is reset with HTTP_1_1_REQUIRED so the client retries on HTTP/1.1."""


class ClientGone(Exception):
    """The client reset the stream or closed the connection before the body ended."""


@dataclass
class Request:
    method: str
    path: str                   # percent-encoded path, without the query
    query: str                  # without "?"
    headers: Headers
    body: RequestBody
    connection: ConnectionInfo
    http_version: str = "1.1"   # "1.1" | "2"
    scheme: str = "https"
    authority: str = ""         # Host header / :authority
    request_id: str = ""
    # Set by the connection layer; reading the certificate may fetch it late (issue 4).
    # Called with this request (not bound to it: a request holding a callable that holds
    # the request would be a reference cycle).
    certificate_source: Callable[[Request], Awaitable[x509.Certificate | None]] | None = None
    # How the certificate was obtained, for the access log.
    certificate_origin: str = "none"

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def header(self, name: bytes) -> bytes | None:
        """First value of a header (``name`` lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def client_certificate(self) -> x509.Certificate | None:
        """The client's certificate: the one hook every certificate read goes through."""
        if self.certificate_source is None:
            return self.connection.handshake_certificate
        return await self.certificate_source(self)


async def close_body(body: bytes | AsyncIterator[bytes]) -> None:
    """Close a streamed body that will not be read to its end (bytes need nothing)."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


@dataclass
class Response:
    """A response ready to send: the body is bytes or an async iterator of chunks."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes | AsyncIterator[bytes] = b""
    # Known length of a streamed body (None: unknown, use chunked / DATA until end).
    content_length: int | None = None
    # HTTP/1.1 reason phrase (a policy's set-status reason); None: the standard phrase.
    # HTTP/2 has no reason phrase.
    reason: bytes | None = None

    @classmethod
    def json_error(cls, status: int, message: str, reason: str | None = None) -> Response:
        import json
        payload = {"statusCode": status, "message": message}
        if reason:
            payload["reason"] = reason
        data = json.dumps(payload).encode()
        return cls(status, [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())], data)
