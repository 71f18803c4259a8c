"""HTTP/1.1 on h11: keep-alive, pipelining, chunked bodies, ``Expect: 100-continue``.

h11 keeps the protocol state; this adapter turns its events into :class:`Request` objects with
streaming bodies and runs one request at a time (pipelined requests wait inside h11, which
reports PAUSED until the current response is complete).
"""

from __future__ import annotations

import h11

from tlsgate.http.base import SERVER_HEADER, HTTPLimits, PlaintextChannel, RequestHandler
from tlsgate.http.messages import ClientGone, ConnectionInfo, Headers, Request, RequestBody

_ERROR_MESSAGES = {
    400: b"Bad Request",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
}


class H1Connection:
    def __init__(self, channel: PlaintextChannel, info: ConnectionInfo,
                 handler: RequestHandler, limits: HTTPLimits) -> None:
        self._channel = channel
        self._info = info
        self._handler = handler
        self._limits = limits
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_size)
        self._body: RequestBody | None = None
        self._closed = False

    # -- input from the connection --------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._closed:
            return
        self._h11.receive_data(data)
        self._process_events()

    def receive_eof(self) -> None:
        if self._closed:
            return
        self._h11.receive_data(b"")
        self._process_events()

    def connection_lost(self) -> None:
        self._closed = True
        if self._body is not None and not self._body.complete:
            self._body.fail(ClientGone("connection closed"))

    @property
    def busy(self) -> bool:
        """A request is in progress (the idle timer must not fire)."""
        return self._body is not None

    def _process_events(self) -> None:
        h = self._h11
        while not self._closed:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(exc)
                return
            kind = type(event)
            if kind is h11.Data:
                if self._body is not None:
                    self._body.feed(event.data)
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return
            elif kind is h11.Request:
                self._start_request(event)
            elif kind is h11.EndOfMessage:
                if self._body is not None:
                    self._body.finish()
                if h.our_state is h11.DONE:   # the response went out before the body ended
                    self._next_cycle()
            elif kind is h11.ConnectionClosed:
                self._peer_closed()
                return

    def _start_request(self, event: h11.Request) -> None:
        headers: Headers = list(event.headers)
        content_length = None
        host = b""
        for name, value in headers:
            if name == b"content-length":
                content_length = int(value)
            elif name == b"host":
                host = value
        if content_length is None and not _is_chunked(headers):
            content_length = 0
        body = RequestBody(content_length, high_water=self._limits.body_high_water,
                           pause=self._channel.pause_reading,
                           resume=self._channel.resume_reading)
        if content_length == 0:
            body.finish()
        body.on_first_read = self._maybe_send_100_continue
        self._body = body
        path, _, query = event.target.partition(b"?")
        request = Request(
            method=event.method.decode("ascii"),
            path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers=headers,
            body=body,
            connection=self._info,
            http_version=event.http_version.decode("ascii"),
            authority=host.decode("latin-1"),
        )
        self._channel.request_started()
        self._channel.spawn(self._run(request))

    async def _run(self, request: Request) -> None:
        sink = H1ResponseSink(self, request)
        try:
            await self._handler(request, sink)
        finally:
            if not sink.ended and not self._closed:
                sink.abort()
            self._channel.request_finished()

    def _maybe_send_100_continue(self) -> None:
        if self._h11.they_are_waiting_for_100_continue and not self._closed:
            self._send(h11.InformationalResponse(status_code=100, headers=[]))

    # -- output ---------------------------------------------------------------------------

    def _send(self, event) -> None:
        for piece in self._h11.send_with_data_passthrough(event) or ():
            self._channel.write(piece)

    def _response_complete(self) -> None:
        h = self._h11
        if h.our_state is h11.MUST_CLOSE or h.their_state in (h11.MUST_CLOSE, h11.CLOSED):
            self._close()
        elif h.their_state is h11.DONE:
            self._next_cycle()
        elif self._body is not None and not self._body.complete and self._body.received == 0 \
                and self._body.content_length not in (None, 0):
            # The handler answered without reading the body (an error, a 100-continue
            # refusal): the client's body would be read as the next request. Close.
            self._close()
        # else: the rest of the body is still arriving; EndOfMessage starts the next cycle.

    def _next_cycle(self) -> None:
        self._body = None
        try:
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()
            return
        # Pipelined requests may already be buffered inside h11: serve them now.
        self._process_events()

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self._body is not None and not self._body.complete:
            self._body.fail(ClientGone(str(exc)))
        status = exc.error_status_hint or 400
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            message = _ERROR_MESSAGES.get(status, b"Bad Request") + b": " + str(exc).encode()
            self._channel.write(_plain_error(status, message))
        self._close()

    def _peer_closed(self) -> None:
        if self._body is not None and not self._body.complete:
            self._body.fail(ClientGone("connection closed"))
        if self._body is None:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._channel.close()


class H1ResponseSink:
    """Writes one response through h11; the body may be streamed."""

    __slots__ = ("_conn", "_request", "started", "ended")

    def __init__(self, conn: H1Connection, request: Request) -> None:
        self._conn = conn
        self._request = request
        self.started = False
        self.ended = False

    async def start(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        conn = self._conn
        if conn._closed:
            raise ClientGone("connection closed")
        self.started = True
        headers = [SERVER_HEADER, *headers]
        body = self._request.body
        if status >= 400 and not body.complete and body.received == 0:
            headers.append((b"connection", b"close"))
        conn._send(h11.Response(status_code=status, headers=headers))
        if end_stream:
            await self.end()

    async def write(self, data: bytes) -> None:
        conn = self._conn
        if conn._closed:
            raise ClientGone("connection closed")
        if data:
            conn._send(h11.Data(data=data))
            await conn._channel.drain()

    async def end(self) -> None:
        if self.ended:
            return
        conn = self._conn
        if conn._closed:
            raise ClientGone("connection closed")
        self.ended = True
        conn._send(h11.EndOfMessage())
        conn._response_complete()

    def abort(self) -> None:
        """Headers may be out already: the only honest signal left is to drop the connection."""
        self.ended = True
        conn = self._conn
        if not self.started and not conn._closed:
            conn._channel.write(_plain_error(500, b"Internal Server Error"))
            conn._close()
            return
        conn._closed = True
        conn._channel.abort()


def _is_chunked(headers: Headers) -> bool:
    return any(name == b"transfer-encoding" for name, _ in headers)


def _plain_error(status: int, message: bytes) -> bytes:
    reason = _ERROR_MESSAGES.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(message), message))
