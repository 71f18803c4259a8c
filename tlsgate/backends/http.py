"""``http://host:port/base`` backends: an HTTP/1.1 reverse proxy with a keep-alive pool.

Design, for an edge gateway that must stay fast and bounded under load:

- Each backend connection is an :class:`asyncio.Protocol` feeding an h11 client state
  machine directly (no StreamReader in between: one copy fewer per chunk).
- Bodies stream both ways. The request body is written while it is read from the client and
  every write waits for the socket to drain, so a slow backend stalls the client rather than
  filling memory. Response bytes pause the backend socket once ``READ_HIGH_WATER`` bytes wait
  unread, so a slow client stalls the backend the same way.
- A connection goes back to the pool only when h11 says both directions ended cleanly
  (``DONE``/``DONE``) and the response body was read to its end; anything else (an aborted
  download, a backend that answered before reading the upload, ``Connection: close``) closes
  it.
- ``timeout`` bounds every wait on the backend: connecting, writing (a stalled drain), the
  response head (counted from the end of the upload, so slow clients are not punished) and
  the gap between two response body reads.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from urllib.parse import urlsplit

import h11

from tlsgate.backends import BackendError
from tlsgate.http.base import comma_tokens
from tlsgate.http.messages import Headers, Request, RequestBody, Response

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
# Request headers the proxy sets itself (host, framing, forwarding) or consumes (expect: the
# client-side adapter already answered 100-continue).
_REQUEST_REPLACED = HOP_BY_HOP | {b"host", b"content-length", b"expect",
                                  b"x-forwarded-proto", b"x-forwarded-host"}
_RESPONSE_REPLACED = HOP_BY_HOP | {b"content-length"}
# A response field value as RFC 9110 §5.5 defines it (visible ASCII and obs-text, inner spaces
# and tabs). h11's client side lets control characters through (a DEL, a \x01), which the
# HTTP/2 side must not send and HTTP/1.1 clients should not get.
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")

log = logging.getLogger("tlsgate.backends.http")
# Safe to send again when a stale pooled connection failed (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods whose empty body is better sent without any "content-length: 0".
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})

READ_HIGH_WATER = 262144         # response bytes held unread before the socket is paused
MAX_RESPONSE_HEAD = 65536        # larger response heads are a 502


class HttpBackend:
    """Reverse proxy to one HTTP/1.1 origin, with its own keep-alive connection pool."""

    def __init__(self, base_url: str, timeout: float, pool_size: int = 64,
                 idle_timeout: float = 30.0, *, api_path: str = "") -> None:
        """``api_path`` is the API's path prefix: it is replaced by the base URL's path, as
        API Management maps its API URL suffix onto the web service URL
        (``/echo/users`` on an API at ``/echo`` with ``http://b/base`` → ``/base/users``)."""
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"backend URL must be http://host[:port][/path]: {base_url!r}")
        if parts.query or parts.fragment or parts.username is not None:
            raise ValueError(f"backend URL takes no query, fragment or credentials: {base_url!r}")
        self.base_path = parts.path.rstrip("/")
        self._api_path = api_path.rstrip("/")
        self.timeout = timeout
        self._host_header = parts.netloc.encode("ascii")
        self.pool = ConnectionPool(parts.hostname, parts.port or 80, timeout=timeout,
                                   size=pool_size, idle_timeout=idle_timeout)

    def __repr__(self) -> str:
        return f"HttpBackend({self.pool.host}:{self.pool.port}{self.base_path})"

    async def handle(self, request: Request) -> Response:
        try:
            head, has_body = self._request_head(request)
        except (ValueError, h11.LocalProtocolError):
            # h11 is stricter than the client-side parsers (e.g. a non-ASCII target over h2).
            return Response.json_error(400, "Bad Request: request cannot be forwarded",
                                       "InvalidRequestForBackend")
        try:
            conn = await self.pool.acquire()
        except TimeoutError:
            return _timeout_error()
        except OSError:
            return _unreachable_error()
        body = request.body if has_body else None
        try:
            return await self._exchange(conn, head, body)
        except _StaleConnection:
            if has_body or request.method not in IDEMPOTENT_METHODS:
                return _unreachable_error()
        # One retry, on a connection that cannot be stale.
        try:
            conn = await self.pool.connect()
            return await self._exchange(conn, head, None)
        except TimeoutError:
            return _timeout_error()
        except (OSError, _StaleConnection):
            return _unreachable_error()

    async def aclose(self) -> None:
        await self.pool.aclose()

    # -- request --------------------------------------------------------------------------

    def _request_head(self, request: Request) -> tuple[h11.Request, bool]:
        """The h11 request to send, and whether a body follows it."""
        headers = forward_headers(request, self._host_header)
        has_body = _add_framing(headers, request.body, request.method)
        path = request.path
        if self._api_path and path.startswith(self._api_path):
            path = path[len(self._api_path):]
        target = (self.base_path + path) or "/"
        if request.query:
            target = f"{target}?{request.query}"
        head = h11.Request(method=request.method, target=target.encode("ascii"),
                           headers=headers)
        return head, has_body

    async def _exchange(self, conn: BackendConnection, head: h11.Request,
                        body: RequestBody | None) -> Response:
        """Send the request, wait for the response head, hand back a streaming response."""
        reused = conn.begin_exchange()
        upload: asyncio.Task[None] | None = None
        try:
            conn.send(head)
            if body is None:
                conn.send(h11.EndOfMessage())
                conn.read_deadline = conn.loop.time() + self.timeout
            else:
                conn.read_deadline = None           # armed when the upload ends
                upload = conn.loop.create_task(_upload(conn, body, self.timeout))
                upload.add_done_callback(conn.upload_finished(self.timeout))
            event = await _read_response_head(conn)
        except BaseException as exc:
            conn.discard()
            _cancel(upload)
            if not isinstance(exc, Exception):
                raise                           # cancelled: the client no longer waits
            return _head_failure(exc, upload, reused, conn.received)
        return self._response(conn, event, upload, head.method)

    # -- response -------------------------------------------------------------------------

    def _response(self, conn: BackendConnection, event: h11.Response,
                  upload: asyncio.Task[None] | None, method: bytes) -> Response:
        """The pipeline's Response for a backend response head; the body streams on."""
        headers, content_length = _response_headers(event)
        problem = _response_problem(event.status_code, headers)
        if problem is not None:
            log.warning("%r sent %s: answered 502", self, problem)
            conn.discard()
            _cancel(upload)
            return _invalid_response_error()
        stream = ResponseStream(conn, upload, self.timeout)
        if method == b"HEAD" or event.status_code in (204, 304) or content_length == 0:
            # No body follows; h11 already knows it, so this ends the exchange now.
            stream.finish_without_body()
            return Response(event.status_code, headers, b"", content_length=content_length)
        return Response(event.status_code, headers, stream, content_length=content_length)


class _StaleConnection(Exception):
    """A reused connection failed before any response byte: the backend had closed it."""


def forward_headers(request: Request, host_header: bytes) -> Headers:
    """The client's end-to-end headers plus Host and the X-Forwarded-* trio."""
    listed = connection_listed(request.headers)
    drop = _REQUEST_REPLACED | listed if listed else _REQUEST_REPLACED
    headers: Headers = [(b"host", host_header)]
    forwarded_for: bytes | None = None
    cookies: list[bytes] = []
    for name, value in request.headers:
        if name in drop or name.startswith(b":"):
            continue
        if name == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
        elif name == b"cookie":
            cookies.append(value)           # HTTP/2 splits cookies; HTTP/1.1 wants one line
        else:
            headers.append((name, value))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    client_ip = request.connection.client_address[0].encode()
    # Append like nginx's $proxy_add_x_forwarded_for: the last entry is the one to trust.
    headers.append((b"x-forwarded-for",
                    client_ip if forwarded_for is None else forwarded_for + b", " + client_ip))
    headers.append((b"x-forwarded-proto", b"https"))
    original_host = request.authority.encode() if request.authority else request.header(b"host")
    if original_host:
        headers.append((b"x-forwarded-host", original_host))
    return headers


def connection_listed(headers: Headers) -> frozenset[bytes]:
    """Header names a Connection header declares hop-by-hop (RFC 9110 §7.6.1)."""
    return frozenset(token for name, value in headers if name == b"connection"
                     for token in comma_tokens(value) if token)


def _add_framing(headers: Headers, body: RequestBody, method: str) -> bool:
    """Add Content-Length or chunked framing; True when a body is to be sent."""
    if body.content_length is not None:
        if body.content_length == 0:
            if method not in _NO_BODY_METHODS:
                headers.append((b"content-length", b"0"))
            return False
        headers.append((b"content-length", str(body.content_length).encode()))
        return True
    if body.complete and body.received == 0:
        return False
    headers.append((b"transfer-encoding", b"chunked"))
    return True


def _response_headers(event: h11.Response) -> tuple[Headers, int | None]:
    """End-to-end response headers, and the Content-Length the backend announced.

    The length moves to ``Response.content_length`` so the client-side adapter frames the
    body itself (for HEAD it is the length a GET would have had, as the backend said).
    """
    listed = connection_listed(event.headers)
    drop = _RESPONSE_REPLACED | listed if listed else _RESPONSE_REPLACED
    content_length: int | None = None
    chunked = False
    headers: Headers = []
    for name, value in event.headers:
        if name == b"content-length":
            content_length = int(value)     # h11 validated it
        elif name == b"transfer-encoding":
            chunked = True
        elif name not in drop:
            headers.append((name, value))
    # With both, the body is chunked (h11 reads it so) and the length is not to be trusted:
    # an intermediary removes it (RFC 9112 §6.3).
    return headers, None if chunked else content_length


def _response_problem(status: int, headers: Headers) -> str | None:
    """What makes a backend response head unfit to pass on, if anything: a status past 599
    (h11 reads any three digits; RFC 9110 §15 ends there), or a field value with a control
    character (named, not quoted: a value may be a credential)."""
    if status > 599:
        return f"status {status}"
    for name, value in headers:
        if not _FIELD_VALUE.fullmatch(value):
            return f"an invalid value in header {name.decode('latin-1')!r}"
    return None


async def _upload(conn: BackendConnection, body: RequestBody, timeout: float) -> None:
    """Copy the client's body to the backend, waiting for the socket to drain as it goes."""
    try:
        while True:
            try:
                chunk = await body.read_chunk()
            except Exception as exc:
                raise _ClientBodyFailed(exc) from None
            if not chunk:
                break
            conn.send(h11.Data(data=chunk))
            await conn.drain(timeout)
        conn.send(h11.EndOfMessage())
    except BaseException:
        # Wakes the response reader too: nothing good can come from this connection now.
        conn.discard()
        raise


class _ClientBodyFailed(Exception):
    """Reading the request body from the client failed (client gone, body too large...)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


async def _read_response_head(conn: BackendConnection) -> h11.Response:
    while True:
        event = await conn.next_event()
        if type(event) is h11.Response:
            return event
        if type(event) is h11.InformationalResponse:
            continue                        # 100 Continue & co: nothing for the client
        raise ConnectionResetError("backend closed the connection before responding")


def _head_failure(exc: Exception, upload: asyncio.Task[None] | None, reused: bool,
                  received: int) -> Response:
    """Map why no response head came to the client's error response (or re-raise)."""
    cause = exc
    if upload is not None and upload.done() and not upload.cancelled():
        cause = upload.exception() or exc   # the upload failing is what broke the exchange
    if isinstance(cause, _ClientBodyFailed):
        raise cause.error                   # the client is gone: the pipeline handles it
    if isinstance(cause, TimeoutError):     # before OSError: TimeoutError subclasses it
        return _timeout_error()
    if isinstance(cause, h11.LocalProtocolError):
        return Response.json_error(502, "Bad Gateway: request cannot be forwarded",
                                   "BackendProtocolError")
    if not isinstance(cause, (OSError, h11.RemoteProtocolError)):
        raise cause
    if received == 0 and reused:
        raise _StaleConnection() from cause
    if received and isinstance(cause, h11.RemoteProtocolError):
        return _invalid_response_error()
    return _unreachable_error()


def _invalid_response_error() -> Response:
    return Response.json_error(502, "Bad Gateway: invalid response from backend",
                               "BackendProtocolError")


def _unreachable_error() -> Response:
    return Response.json_error(502, "Bad Gateway: backend unreachable", "BackendUnreachable")


def _timeout_error() -> Response:
    return Response.json_error(504, "Gateway Timeout: backend did not respond in time",
                               "BackendTimeout")


def _client_failure(upload: asyncio.Task[None] | None) -> Exception | None:
    """The client-side error that ended an upload (see _ClientBodyFailed), if that is how
    it ended."""
    if upload is None or not upload.done() or upload.cancelled():
        return None
    failure = upload.exception()
    return failure.error if isinstance(failure, _ClientBodyFailed) else None


def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()


class ResponseStream:
    """The response body: an async iterator of chunks that owns the backend connection.

    A class rather than an async generator so that :meth:`aclose` releases the connection
    even when iteration never started (an unstarted generator's ``finally`` never runs).
    Chunks are the bytes-like objects h11 produced (``bytearray``), passed on without a copy.
    """

    __slots__ = ("_conn", "_upload", "_timeout")

    def __init__(self, conn: BackendConnection, upload: asyncio.Task[None] | None,
                 timeout: float) -> None:
        self._conn: BackendConnection | None = conn
        self._upload = upload
        self._timeout = timeout

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        while True:
            conn.read_deadline = conn.loop.time() + self._timeout
            try:
                event = await conn.next_event()
            except (OSError, h11.RemoteProtocolError) as exc:
                client_error = _client_failure(self._upload)
                self._discard()
                if client_error is not None:
                    # The upload broke the exchange (the client left or stalled): that is
                    # what the gateway must answer or log, not a backend failure.
                    raise client_error from None
                raise BackendError(f"backend connection failed mid-response: {exc!r}") from exc
            except BaseException:
                self._discard()
                raise
            if type(event) is h11.Data:
                if event.data:
                    return event.data
            elif type(event) is h11.EndOfMessage:
                self._finish()
                raise StopAsyncIteration
            else:
                self._discard()
                raise BackendError(f"unexpected backend event mid-response: {event!r}")

    async def aclose(self) -> None:
        """The client went away: the rest of the body is unread, so the connection goes."""
        self._discard()

    def finish_without_body(self) -> None:
        """End an exchange whose response has no body (HEAD, 204, 304, length 0)."""
        try:
            event = self._conn.h11.next_event()
        except h11.RemoteProtocolError:
            event = None
        if type(event) is h11.EndOfMessage:
            self._finish()
        else:
            self._discard()

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        upload = self._upload
        if upload is not None and not upload.done():
            # The backend answered without reading the whole upload: h11 is not DONE on
            # our side, so the connection cannot be reused; stop feeding it.
            upload.cancel()
            conn.discard()
            return
        conn.pool.release(conn)

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.discard()
            _cancel(self._upload)

    def __del__(self) -> None:
        # Safety net for a pipeline that dropped the body without closing it.
        conn = self._conn
        if conn is not None and not conn.loop.is_closed():
            conn.discard()


class BackendConnection(asyncio.Protocol):
    """One backend connection: the transport, its h11 client state machine, flow control."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.transport: asyncio.Transport | None = None
        self.idle = False                   # parked in the pool
        self.idle_since = 0.0
        self.exchanges = 0
        self.received = 0                   # bytes received during the current exchange
        self.read_deadline: float | None = None   # loop time after which reads time out
        self._unread = 0                    # bytes fed to h11 since it last needed data
        self._error: BaseException | None = None
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:
            self.discard()                  # bytes nobody asked for: the stream is out of sync
            return
        self.received += len(data)
        self._unread += len(data)
        self.h11.receive_data(data)
        if self._unread > READ_HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        _wake(self._read_waiter)

    def eof_received(self) -> None:
        self.h11.receive_data(b"")
        _wake(self._read_waiter)            # returning None lets the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if exc is not None:
            self._error = exc               # a reset: never mistake it for a clean end
        elif not self.h11.trailing_data[1]:
            self.h11.receive_data(b"")
        _wake(self._read_waiter)
        _wake(self._drain_waiter)
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    # -- used by the exchange ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._lost or self.transport is None or self.transport.is_closing()

    def begin_exchange(self) -> bool:
        """Start an exchange; True when the connection served one before (may be stale)."""
        self.idle = False
        self.received = 0
        self.exchanges += 1
        return self.exchanges > 1

    def send(self, event: h11.Event) -> None:
        if self.closed:
            raise self._error or ConnectionResetError("backend connection closed")
        parts = self.h11.send_with_data_passthrough(event)
        if len(parts) == 1:
            self.transport.write(parts[0])
        elif parts:
            self.transport.writelines(parts)

    async def drain(self, timeout: float) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        while self._write_paused and not self._lost:
            self._drain_waiter = self.loop.create_future()
            try:
                await _wait(self._drain_waiter, self.loop.time() + timeout)
            finally:
                self._drain_waiter = None
        if self._lost:
            raise self._error or ConnectionResetError("backend connection closed")

    async def next_event(self) -> h11.Event:
        """The next h11 event, waiting for bytes (until ``read_deadline``) when needed."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._error is not None:
                raise self._error
            if self.closed:
                raise ConnectionResetError("backend connection closed")
            self._unread = 0
            if self._read_paused:
                self._read_paused = False
                self.transport.resume_reading()
            self._read_waiter = self.loop.create_future()
            try:
                await _wait(self._read_waiter, self.read_deadline)
            finally:
                self._read_waiter = None

    def upload_finished(self, timeout: float):
        """Done-callback for the upload task: start the response-head clock now."""
        def on_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled():
                task.exception()            # mark retrieved; _head_failure inspects it
            self.read_deadline = self.loop.time() + timeout
            _wake(self._read_waiter)
        return on_done

    def reusable(self) -> bool:
        """Both sides finished cleanly and nothing extra arrived: safe for the next request."""
        conn = self.h11
        return (not self.closed and conn.our_state is h11.DONE and conn.their_state is h11.DONE
                and not conn.trailing_data[0])

    def park(self) -> None:
        """Reset for the next request and wait in the pool, still watching for EOF."""
        self.h11.start_next_cycle()
        self.idle = True
        self.idle_since = self.loop.time()
        self.read_deadline = None
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def discard(self) -> None:
        """Drop the connection at once (RST): its state is unknown or unwanted."""
        self.idle = False
        if self.transport is not None and not self._lost:
            self.transport.abort()

    def close(self) -> None:
        """Close an idle connection politely (FIN)."""
        if self.transport is not None and not self._lost:
            self.transport.close()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _wait(waiter: asyncio.Future[None], deadline: float | None) -> None:
    """Await ``waiter``; TimeoutError at loop time ``deadline`` (a timer, not a task cancel)."""
    if deadline is None:
        await waiter
        return
    loop = asyncio.get_running_loop()
    timer = loop.call_at(deadline, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class ConnectionPool:
    """Idle keep-alive connections to one origin, most recently used first.

    ``size`` caps the idle connections kept, not the connections in use: a burst opens as
    many as it needs and the surplus is closed when it comes back. Idle connections older
    than ``idle_timeout`` are closed by a sweep timer that only runs while the pool is not
    empty; one the backend closed leaves the pool at once (``connection_lost``).
    """

    def __init__(self, host: str, port: int, *, timeout: float, size: int,
                 idle_timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.size = size
        self.idle_timeout = idle_timeout
        self.closed = False
        self._idle: deque[BackendConnection] = deque()
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Idle connections waiting in the pool."""
        return len(self._idle)

    async def acquire(self) -> BackendConnection:
        """A pooled connection when one is alive, else a new one."""
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            if not conn.closed:
                return conn
        return await self.connect()

    async def connect(self) -> BackendConnection:
        """A new connection; OSError when refused, TimeoutError after ``timeout``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            _, conn = await loop.create_connection(lambda: BackendConnection(self),
                                                   self.host, self.port)
        return conn

    def release(self, conn: BackendConnection) -> None:
        """Take a connection back after an exchange, or close it when it cannot be reused."""
        if not conn.reusable():
            conn.discard()
            return
        if self.closed or len(self._idle) >= self.size:
            conn.close()
            return
        conn.park()
        self._idle.append(conn)
        if self._sweeper is None:
            self._schedule_sweep(conn.idle_since)

    def forget(self, conn: BackendConnection) -> None:
        """A connection closed: make sure it is not handed out again."""
        if conn.idle:
            conn.idle = False
            try:
                self._idle.remove(conn)
            except ValueError:
                pass

    def _schedule_sweep(self, oldest_since: float) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_at(oldest_since + self.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for ``idle_timeout`` (the oldest sit on the left)."""
        self._sweeper = None
        limit = asyncio.get_running_loop().time() - self.idle_timeout
        while self._idle and self._idle[0].idle_since <= limit:
            conn = self._idle.popleft()
            conn.idle = False
            conn.close()
        if self._idle:
            self._schedule_sweep(self._idle[0].idle_since)

    async def aclose(self) -> None:
        """Close idle connections; those in use are closed when their exchange ends."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            conn.close()
