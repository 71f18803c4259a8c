"""HTTP/1.1 on h11: keep-alive, pipelining, chunked bodies, ``Expect: 100-continue``.

h11 keeps the protocol state; this adapter turns its events into :class:`Request` objects with
streaming bodies and runs one request at a time (pipelined requests wait inside h11, which
reports PAUSED until the current response is complete).

The direct path. h11 costs ~70 µs per request/response cycle, a third of a keep-alive
request's server time, and an event plus two copies per body chunk. Most requests on a busy
edge are plain: one whole head in one read, no body or a Content-Length one, HTTP/1.1, no
Expect/Upgrade. Such a request (:func:`parse_plain_request`, strict RFC 9112 grammar) is
served without h11: its body bytes go straight to the :class:`RequestBody` as they arrive
(``_receive_direct``), and its response is framed here (:class:`DirectResponseSink`, h11's
rules: Content-Length or chunked, no body for HEAD/204/304, ``connection: close`` when the
client asked for it or an error came before the body's end). Anything else - a head in
pieces, pipelining, chunked bodies, HTTP/1.0, odd whitespace, every error - goes to h11 as
before, which then answers exactly as it always did. h11 stays IDLE during direct cycles, so
the two never disagree about where the connection is; tests/test_http1_direct.py checks
that both paths put the same bytes on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Awaitable
from typing import NamedTuple

import h11

from tlsgate.http.base import (
    DISCARD_LIMIT,
    FIELD_NAME,
    FIELD_VALUE,
    SERVER_HEADER,
    HTTPLimits,
    PlaintextChannel,
    RequestHandler,
    ResponseFramingError,
    attach_certificate_source,
    comma_tokens,
    remember,
    remember_field,
)
from tlsgate.http.messages import (
    STATUS_PHRASES,
    ClientGone,
    ConnectionInfo,
    Headers,
    Request,
    RequestBody,
)
from tlsgate.pipeline.access_log import log_refused

log = logging.getLogger("tlsgate.connection")

_ERROR_MESSAGES = {
    400: b"Bad Request",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
}

# Bytes a client may pipeline while its current request is being answered (h11 holds them);
# past this the socket is not read until the response is done.
PIPELINE_LIMIT = 1024 * 1024
# After an error answer (400, 431) the connection closes once the client stopped sending
# (closed, or quiet for LINGER_QUIET seconds), at the latest after LINGER_TIMEOUT seconds or
# LINGER_LIMIT more bytes: nginx's lingering_timeout / lingering_time.
LINGER_QUIET = 0.5
LINGER_TIMEOUT = 5.0
LINGER_LIMIT = 1024 * 1024


class H1Connection:
    def __init__(self, channel: PlaintextChannel, info: ConnectionInfo,
                 handler: RequestHandler, limits: HTTPLimits) -> None:
        self._channel = channel
        self._info = info
        self._handler = handler
        self._limits = limits
        self._h11_state: h11.Connection | None = None      # see _h11
        self._body: RequestBody | None = None
        self._closed = False
        self._discarding = 0      # > 0: dropping the rest of a body nobody reads (bytes + 1)
        self._pipelined = 0       # bytes received after the current request ended
        self._awaiting_continue = False   # the client holds its body back until 100 Continue
        self._lingering = 0       # > 0: error answered, dropping input until close (bytes + 1)
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_quiet_until = 0.0
        self._linger_end = 0.0
        self._eof = False         # the client closed its side
        self._h11_used = False    # h11 holds a request or buffered input: no direct path
        self._direct: DirectResponseSink | None = None   # a direct cycle in progress
        self._held = b""          # input that arrived during a direct cycle
        self._body_left = 0       # body bytes of the direct request still to come
        self._draining = False    # direct response sent early: dropping the body's rest
        self._drained = 0
        # Requests run one after another in one task per connection (see _submit).
        self._queued: deque[tuple[Request, H1ResponseSink | DirectResponseSink]] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None

    # -- input from the connection --------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._lingering:
            self._lingering += len(data)
            if self._lingering > LINGER_LIMIT:
                self._end_linger()
            else:
                self._linger_quiet_until = asyncio.get_running_loop().time() + LINGER_QUIET
            return
        if self._closed:
            return
        if self._direct is not None:
            self._receive_direct(data)
            return
        if data[:1] in _EMPTY_LINE_START and self._awaiting_request_line():
            # Empty lines before a request line are ignored (RFC 9112 §2.2; old clients
            # send a CRLF after a POST body). h11 would answer them with a 400.
            data = data.lstrip(b"\r\n")
            if not data:
                return
        if not self._h11_used:
            plain = parse_plain_request(data, self._limits.max_header_size)
            if plain is not None:
                self._start_direct(plain)
                return
            self._h11_used = True
        their_state = self._h11.their_state
        if their_state is h11.MUST_CLOSE or their_state is h11.CLOSED:
            # The request said Connection: close (or was HTTP/1.0): nothing after it is
            # processed (RFC 9112 §9.6); its response still goes out, then the connection
            # closes. h11 would refuse these bytes and drop the answer with a 400.
            return
        if their_state is h11.DONE:
            self._pipelined += len(data)
            if self._pipelined > PIPELINE_LIMIT:
                self._channel.pause_reading()       # resumed by the next cycle
        self._h11.receive_data(data)
        self._process_events()

    def _skip_empty_lines(self) -> None:
        """Empty lines ahead of the next request line (see receive_data): h11 keeps what
        came behind the last request, so a fresh h11 takes the rest."""
        pending, closed = self._h11.trailing_data
        self._h11 = self._new_h11()
        rest = pending.lstrip(b"\r\n")
        if rest:
            self._h11.receive_data(rest)
        if closed:
            self._h11.receive_data(b"")     # the client's EOF came behind them

    #: HTTP/1.1 has no flow control of its own that could hold a body back (see H2).
    input_resumed_at = 0.0

    def bodies_in_progress(self) -> tuple[RequestBody, ...]:
        """The request body still arriving, unanswered (for the connection's stalled-body
        check): once its response has begun, a client may stop sending."""
        body = self._body
        if body is None or body.complete:
            return ()
        if self._direct is not None:
            answered = self._direct.started
        else:
            answered = self._h11.our_state is not h11.SEND_RESPONSE
        return () if answered else (body,)

    @property
    def _h11(self) -> h11.Connection:
        """h11's state machine, made when first needed: a connection whose requests all
        take the direct path never needs one (~6 µs saved per one-request connection)."""
        state = self._h11_state
        if state is None:
            state = self._h11_state = self._new_h11()
        return state

    @_h11.setter
    def _h11(self, state: h11.Connection) -> None:
        self._h11_state = state

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER,
                              max_incomplete_event_size=self._limits.max_header_size)

    def _awaiting_request_line(self) -> bool:
        """Nothing of the next request has arrived yet (between requests)."""
        if not self._h11_used:
            return True
        h = self._h11
        return h.their_state is h11.IDLE and not h.trailing_data[0]

    def receive_eof(self) -> None:
        if self._lingering:
            self._end_linger()
            return
        if self._closed:
            return
        self._eof = True
        if self._direct is not None:
            if self._body_left:
                # Cut short: the request can never complete, and nothing is answered (after
                # an EOF without close_notify the TLS session cannot send): as on h11's path.
                self._body.fail(ClientGone("connection closed"))
                self._close()
            return                  # else closed once the response is out
        self._h11.receive_data(b"")
        self._process_events()

    def connection_lost(self) -> None:
        self._closed = True
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self._body is not None and not self._body.complete:
            self._body.fail(ClientGone("connection closed"))
        # Drop what points back here (the direct sink, the body's flow-control callbacks):
        # a request task still running holds its own references, and the connection is
        # freed by reference counting rather than left to the cyclic garbage collector.
        self._direct = None
        self._body = None
        # Requests queued but not started (the request task is cancelled with the
        # connection, maybe before it ever ran) are dropped here.
        self._queued.clear()
        self._runner = self._wakeup = None      # the task itself is cancelled by its owner

    @property
    def busy(self) -> bool:
        """A request is in progress (the idle timer must not fire)."""
        return self._body is not None

    def _process_events(self) -> None:
        h = self._h11
        while not self._closed:
            if h.their_state is h11.MUST_CLOSE and h.trailing_data[0]:
                return          # bytes after a request that closes: ignored (RFC 9112 §9.6)
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 raises it again from a frame that holds it: its traceback would keep
                # this frame, and so the connection, in a cycle for the garbage collector.
                self._protocol_error(exc.with_traceback(None))
                return
            kind = type(event)
            if kind is h11.Data:
                if self._discarding:
                    self._discarding += len(event.data)
                    if self._discarding - 1 > DISCARD_LIMIT:
                        self._close()
                elif self._body is not None:
                    self._body.feed(event.data)
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return
            elif kind is h11.Request:
                if self._reject_head(event):
                    return
                self._start_request(event)
            elif kind is h11.EndOfMessage:
                if self._body is not None:
                    self._body.finish()
                self._discarding = 0
                # The response went out before the body ended: now the cycle is over.
                if h.our_state is h11.DONE:
                    self._next_cycle()
                elif h.our_state is h11.MUST_CLOSE:
                    self._close()
            elif kind is h11.ConnectionClosed:
                self._peer_closed()
                return

    def _reject_head(self, event: h11.Request) -> bool:
        """Answer (and close) a request head that must not be served; True when it did.

        431 over ``max_header_size``: h11 only limits a head that arrives in pieces, one that
        comes whole in a single read is measured here. 400 for Content-Length together with
        Transfer-Encoding, the request-smuggling pattern (RFC 9112 §6.1; nginx refuses it
        too): h11 would go by the chunked framing, a proxy behind us maybe not.
        """
        size = len(event.method) + len(event.target) + 12 + sum(
            len(name) + len(value) + 4 for name, value in event.headers)
        if size > self._limits.max_header_size:
            status = 431
            message = b"request head larger than %d bytes" % self._limits.max_header_size
        elif _is_chunked(event.headers) and any(
                name == b"content-length" for name, _ in event.headers):
            status, message = 400, b"both Content-Length and Transfer-Encoding"
        else:
            return False
        log_refused(self._info, status, message.decode(), http_version="1.1")
        self._channel.write(_plain_error(status, message))
        self._close_after_error()
        return True

    def _start_request(self, event: h11.Request) -> None:
        headers: Headers = list(event.headers)
        content_length = None
        for name, value in headers:
            if name == b"content-length":
                content_length = int(value)
        if content_length is None and not _is_chunked(headers):
            content_length = 0
        body = self._new_body(content_length)
        body.on_first_read = self._maybe_send_100_continue
        self._awaiting_continue = self._h11.they_are_waiting_for_100_continue
        self._serve(event.method, event.target, headers, event.http_version.decode("ascii"),
                    body, H1ResponseSink)

    def _start_direct(self, plain: PlainRequest) -> None:
        body = self._new_body(plain.length)
        self._direct = DirectResponseSink(self, plain.close)
        self._body_left = plain.length
        self._serve(plain.method, plain.target, plain.headers, "1.1", body, self._direct)
        if plain.body:              # after _serve has set the body's read-ahead (stall mode)
            self._receive_direct(plain.body)

    def _receive_direct(self, data: bytes) -> None:
        """Input during a direct cycle: the rest of the body, then what the client
        pipelined (held until the response is out)."""
        left = self._body_left
        if left:
            piece = data if len(data) <= left else data[:left]
            self._body_left = left = left - len(piece)
            if self._draining:
                self._drained += len(piece)
                if self._drained > DISCARD_LIMIT:
                    self._close()
                    return
            else:
                self._body.feed(piece)
                if not left:
                    self._body.finish()
            if not left and self._draining:
                self._draining = False
                self._direct_cycle_over()
                if len(piece) < len(data):
                    self.receive_data(data[len(piece):])
                return
            if len(piece) == len(data):
                return
            data = data[len(piece):]
        self._held += data
        if len(self._held) > PIPELINE_LIMIT:
            self._channel.pause_reading()       # resumed when the cycle ends

    def _new_body(self, content_length: int | None) -> RequestBody:
        body = RequestBody(content_length, high_water=self._limits.body_high_water,
                           pause=self._channel.pause_reading,
                           resume=self._channel.resume_reading)
        if content_length == 0:
            body.finish()
        self._body = body
        return body

    def _serve(self, method: bytes, target: bytes, headers: Headers, http_version: str,
               body: RequestBody, sink: type[H1ResponseSink] | DirectResponseSink) -> None:
        host = b""
        for name, value in headers:
            if name == b"host":
                host = value
                break
        if target[:8].lower().startswith((b"http://", b"https://")):
            # absolute-form (RFC 9112 §3.2.2): its authority wins over the Host header
            rest = target.partition(b"//")[2]
            end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0),
                      default=len(rest))
            host, target = rest[:end], rest[end:]
            if not target.startswith(b"/"):
                target = b"/" + target
        path, _, query = target.partition(b"?")
        request = Request(
            method=method.decode("ascii"),
            path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers=headers,
            body=body,
            connection=self._info,
            http_version=http_version,
            authority=host.decode("latin-1"),
        )
        settings = self._info.host_settings
        if settings is not None and not settings.negotiate_client_certificate and \
                settings.on_demand_body == "stall":
            # HTTP.sys reads this much of a body ahead and no more until the application
            # reads it: what makes a late certificate request freeze (the deadlock).
            body.high_water = settings.upload_read_ahead
        attach_certificate_source(request, self._channel)
        self._channel.request_started()
        if isinstance(sink, DirectResponseSink):
            sink.request = request
        else:
            sink = sink(self, request)
        self._submit(request, sink)

    def _submit(self, request: Request, sink: H1ResponseSink | DirectResponseSink) -> None:
        """Run a request after those before it, in the connection's request task.

        HTTP/1.1 answers in order anyway; one long-lived task woken per request costs a
        future, where a task per request costs its creation, registration and a done
        callback (a few µs each time, measured with the keep-alive bench)."""
        self._queued.append((request, sink))
        if self._runner is None:
            self._runner = self._channel.spawn(self._run_requests())
        elif self._wakeup is not None:
            wakeup, self._wakeup = self._wakeup, None
            wakeup.set_result(None)

    async def _run_requests(self) -> None:
        queued = self._queued
        handler = self._handler
        loop = asyncio.get_running_loop()
        try:
            while True:
                while queued:
                    request, sink = queued.popleft()
                    try:
                        await handler(request, sink)
                    except ClientGone:
                        pass            # the connection is closed already: nothing to answer
                    except asyncio.CancelledError:
                        if asyncio.current_task().cancelling():
                            raise       # the connection's own cancellation
                        # a handler's own: it ends that request only, as its task would
                    except Exception as exc:        # a bug: logged as a task's would be
                        log.error("request handler failed: %r", exc, exc_info=exc)
                    finally:
                        self._end_request(request, sink)
                    request = sink = None           # not kept while waiting for the next
                self._wakeup = loop.create_future()
                await self._wakeup
        finally:
            # Cancelled with the connection: requests that never started are dropped, and
            # the task is let go (its CancelledError's traceback holds this frame, and so
            # this connection: keeping the task here would be a reference cycle).
            queued.clear()
            self._runner = self._wakeup = None

    def _end_request(self, request: Request,
                     sink: H1ResponseSink | DirectResponseSink) -> None:
        """A request's handler is done (or failed): its spool goes, an unfinished response
        is cut, the connection counts it finished. Never raises: the connection's next
        requests must not be lost to a failure here."""
        try:
            request.body.close_spool()
        except Exception as exc:
            log.error("request handler failed: %r", exc, exc_info=exc)
        if not sink.ended and not self._closed:
            sink.abort()
        self._channel.request_finished()

    def _maybe_send_100_continue(self) -> None:
        if self._h11.they_are_waiting_for_100_continue and not self._closed:
            self._awaiting_continue = False
            self._send(h11.InformationalResponse(status_code=100, headers=[],
                                                 reason=b"Continue"))

    # -- output ---------------------------------------------------------------------------

    def _send(self, event) -> None:
        pieces = self._h11.send_with_data_passthrough(event)
        if pieces:
            # One TLS record for head + data, or chunk header + chunk + CRLF, not three.
            self._channel.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _response_complete(self) -> None:
        h = self._h11
        if h.their_state is h11.DONE:
            if h.our_state is h11.MUST_CLOSE:
                self._close()
            else:
                self._next_cycle()
        elif h.their_state in (h11.MUST_CLOSE, h11.CLOSED) or self._awaiting_continue:
            # Nothing more will come (a client waiting for 100 Continue got a final answer
            # instead and keeps its body).
            self._close()
        elif h.our_state is h11.MUST_CLOSE:
            # An error answered before the body ended (it said Connection: close): drop
            # input until the client is quiet, within the lingering bounds. Waiting for the
            # body's end instead could wait forever on a client stuck in a handshake.
            self._close_after_error()
        else:
            # The response went out before the request body ended and nobody reads the rest
            # (a backend that answered early). Read and drop it, so that a client that reads
            # only after sending still gets the response (closing now would reset the
            # connection under it); EndOfMessage then ends the cycle.
            self._drop_unread_body()
            self._discarding = 1
            self._channel.resume_reading()
            self._process_events()

    def _next_cycle(self) -> None:
        self._body = None
        self._discarding = 0
        self._pipelined = 0
        try:
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()
            return
        # (trailing_data copies h11's buffer, which may hold a pipelined body: no reference
        # to the copy is kept while the next request is processed)
        if self._h11.trailing_data[0][:1] in _EMPTY_LINE_START:
            self._skip_empty_lines()
        self._channel.resume_reading()
        # Pipelined requests may already be buffered inside h11: serve them now.
        self._process_events()
        h = self._h11
        if h.our_state is h11.IDLE and h.their_state is h11.IDLE and not h.trailing_data[0]:
            self._h11_used = False          # nothing pending: the next head may go direct

    def _direct_complete(self, close: bool) -> None:
        """A direct cycle's response is out: close, or take the next request (once the
        body's rest, if the response came early, has been read and dropped)."""
        if self._body_left:
            if close:
                # An error answered before the body ended (it said Connection: close): as
                # on the h11 path, drop input until the client is quiet, then close.
                self._direct = None
                self._close_after_error()
                return
            self._drop_unread_body()
            self._draining = True
            self._drained = 0
            self._channel.resume_reading()
            return
        self._direct_cycle_over(close)

    def _drop_unread_body(self) -> None:
        """The response is out before the request body ended: the rest is read and dropped,
        and a handler still reading it learns so (instead of waiting forever or taking the
        part it got for the whole)."""
        if self._body is not None and not self._body.complete:
            self._body.fail(ClientGone("the request body's rest was dropped: the response "
                                       "was already sent"))

    def _direct_cycle_over(self, close: bool = False) -> None:
        self._direct = None
        self._body = None
        if close:
            self._close()
            return
        held, self._held = self._held, b""
        self._channel.resume_reading()
        if self._eof:
            # The client closed after (maybe) pipelining more: h11 sorts out what is left.
            self._h11_used = True
            self._h11.receive_data(held)
            self._h11.receive_data(b"")
            self._process_events()
        elif held:
            self.receive_data(held)

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self._body is not None and not self._body.complete:
            self._body.fail(ClientGone(str(exc)))
        status = exc.error_status_hint or 400
        # A request cut short by the client's EOF gets no answer: it can never complete, and
        # after an EOF without close_notify the TLS session cannot send anyway.
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not self._eof:
            message = (_ERROR_MESSAGES.get(status) or _reason(status)) + b": " + \
                str(exc).encode()
            log_refused(self._info, status, str(exc), http_version="1.1")
            self._channel.write(_plain_error(status, message))
            self._close_after_error()
        else:
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

    def _close_after_error(self) -> None:
        """Close once the client has stopped sending, not at once: closing a socket with
        unread input resets the connection, and the client may never read the error answer
        just written (RFC 9112 §9.6). Input is dropped meanwhile; nothing more is written."""
        if self._closed:
            return
        self._closed = True
        self._lingering = 1
        self._channel.resume_reading()
        loop = asyncio.get_running_loop()
        self._linger_quiet_until = loop.time() + LINGER_QUIET
        self._linger_end = loop.time() + LINGER_TIMEOUT
        self._linger_timer = loop.call_at(self._linger_quiet_until, self._linger_check)

    def _linger_check(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() >= min(self._linger_quiet_until, self._linger_end):
            self._end_linger()
        else:
            self._linger_timer = loop.call_at(min(self._linger_quiet_until, self._linger_end),
                                              self._linger_check)

    def _end_linger(self) -> None:
        self._lingering = 0
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._channel.close()


class _ResponseSinkBase:
    """What both HTTP/1.1 sinks share: ending (last bytes, then the framing's end) and
    aborting."""

    __slots__ = ("_conn", "request", "started", "ended")

    def __init__(self, conn: H1Connection, request: Request | None) -> None:
        self._conn = conn
        self.request = request
        self.started = False
        self.ended = False

    def _close_if_body_unfinished(self, status: int, headers: Headers) -> Headers:
        """An error before the request body ended: the rest is dropped and the connection
        closed, and the answer says so."""
        if status >= 400 and not self.request.body.complete:
            return [*headers, (b"connection", b"close")]
        return headers

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    def _finish(self, conn: H1Connection) -> None:
        """Write the end of the message and let the connection move on."""
        raise NotImplementedError

    async def end(self, data: bytes = b"") -> None:
        if not self.started:
            raise ResponseFramingError("a response ended before its head was sent")
        if data:
            await self.write(data)
        if self.ended:
            return
        conn = self._conn
        if conn._closed:
            raise ClientGone("connection closed")
        self._finish(conn)

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


class H1ResponseSink(_ResponseSinkBase):
    """Writes one response through h11; the body may be streamed."""

    __slots__ = ()

    async def start(self, status: int, headers: Headers, *, end_stream: bool = False,
                    reason: bytes | None = None) -> None:
        conn = self._conn
        if conn._closed:
            raise ClientGone("connection closed")
        if self.started:
            raise ResponseFramingError("a second response head")
        if reason is None:
            reason = _reason(status)
        elif not _REASON.fullmatch(reason):
            # h11 would write it as is: a CR/LF in a reason would end the status line
            raise ResponseFramingError(f"cannot send reason {reason!r}")
        headers = self._close_if_body_unfinished(status, [SERVER_HEADER, *headers])
        try:
            # Checked before anything is written (a 1xx, an illegal field...), so that the
            # failure is still answered with a 500, as on the direct path.
            head = h11.Response(status_code=status, headers=headers, reason=reason)
        except h11.LocalProtocolError as exc:
            raise ResponseFramingError(f"cannot send this response head: {exc}") from None
        self.started = True
        conn._send(head)
        if end_stream:
            await self.end()

    async def write(self, data: bytes) -> None:
        conn = self._conn
        if conn._closed:
            raise ClientGone("connection closed")
        if data:
            conn._send(h11.Data(data=data))
            await conn._channel.drain()

    def _finish(self, conn: H1Connection) -> None:
        try:
            conn._send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:   # less body than its Content-Length said
            raise ResponseFramingError(str(exc)) from None
        self.ended = True
        conn._response_complete()


class DirectResponseSink(_ResponseSinkBase):
    """Writes the response to a request served without h11, framed the way h11 frames it."""

    __slots__ = ("_close", "_remaining", "_chunked")

    def __init__(self, conn: H1Connection, close: bool) -> None:
        super().__init__(conn, None)    # the request is attached once it is built
        self._close = close         # the client said Connection: close
        self._remaining = 0         # body bytes still owed (Content-Length framing)
        self._chunked = False

    async def start(self, status: int, headers: Headers, *, end_stream: bool = False,
                    reason: bytes | None = None) -> None:
        conn = self._conn
        if conn._closed:
            raise ClientGone("connection closed")
        if self.started:
            raise ResponseFramingError("a second response head")
        headers = self._close_if_body_unfinished(status, headers)
        head = self._encode_head(status, headers, _reason(status) if reason is None else reason)
        self.started = True
        conn._channel.write(head)
        if end_stream:
            await self.end()

    def send_whole(self, status: int, headers: Headers, body: bytes,
                   reason: bytes | None = None) -> bool:
        """``start()`` and ``end(body)`` in one step, for a body at hand that is exactly
        its Content-Length: head and body go out as one write, with no coroutine per step.
        False, with nothing written, for any other shape (chunked, HEAD, a length that
        does not match): the caller then takes the usual steps, which say what is wrong.
        The caller awaits :meth:`drain` after it, as ``write()`` does."""
        conn = self._conn
        if conn._closed or self.started:
            return False
        client_asked_close = self._close
        headers = self._close_if_body_unfinished(status, headers)
        head = self._encode_head(status, headers, _reason(status) if reason is None else reason)
        if self._chunked or self._remaining != len(body):
            # start() encodes it again: as if this had not run (_encode_head notes a
            # handler's own Connection: close in _close, which means "the client asked").
            self._close = client_asked_close
            return False
        self.started = True
        self._remaining = 0
        conn._channel.write(head + body if body else head)
        self._finish(conn)
        return True

    def drain(self) -> Awaitable[None]:
        return self._conn._channel.drain()

    def _encode_head(self, status: int, headers: Headers, reason: bytes) -> bytes:
        """The response head as h11 writes it (h11/_connection.py,
        ``_clean_up_response_headers_for_sending``): fields in order; without a length the
        body goes chunked (``Transfer-Encoding: chunked`` last, HEAD included); when the
        client asked to close, its Connection tokens are rewritten to end with ``close``."""
        head = self._encode_usual_head(status, headers, reason)
        if head is not None:
            return head
        status_line = _STATUS_LINES.get((status, reason))
        if status_line is None:
            if not 200 <= status <= 999 or not _REASON.fullmatch(reason):
                raise ResponseFramingError(f"cannot send status {status} {reason!r}")
            status_line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
            remember(_STATUS_LINES, (status, reason), status_line, len(reason))
        fields = [SERVER_HEADER]
        length = None
        chunked = has_host = False
        connection: set[bytes] = set()
        for name, value in headers:
            if not FIELD_NAME.fullmatch(name) or not FIELD_VALUE.fullmatch(value):
                raise ResponseFramingError(f"illegal header {name!r}: {value!r}")
            lowered = name.lower()
            if lowered not in _FRAMING_FIELDS:
                remember_field(_USUAL_FIELD_LINES, (name, value), b"%s: %s\r\n" % (name, value))
            elif lowered == b"content-length":
                if length is not None or not value.isdigit():
                    raise ResponseFramingError(f"bad Content-Length {value!r}")
                length = int(value)
            elif lowered == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    raise ResponseFramingError(f"unsupported Transfer-Encoding {value!r}")
                chunked = True
                value = b"chunked"
            elif lowered == b"connection":
                connection.update(token for token in comma_tokens(value) if token)
            elif lowered == b"host":
                has_host = True
            fields.append((name, value))
        if chunked and length is not None:
            raise ResponseFramingError("both Content-Length and Transfer-Encoding")
        bodyless = status in (204, 304)
        if length is None and not bodyless:
            if chunked:
                fields = [f for f in fields if f[0].lower() != b"transfer-encoding"]
            fields.append((b"Transfer-Encoding", b"chunked"))
            chunked = True
        if self._close:         # the client asked: Connection rewritten, as h11 does
            fields = [f for f in fields if f[0].lower() != b"connection"]
            connection.discard(b"keep-alive")
            connection.add(b"close")
            fields += [(b"Connection", token) for token in sorted(connection)]
        elif b"close" in connection:
            self._close = True  # the handler's own Connection: close, left where it is
        if has_host:            # h11 writes Host first
            fields.sort(key=lambda field: field[0].lower() != b"host")
        lines = [status_line]
        for name, value in fields:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        if bodyless or self.request.method == "HEAD":
            self._remaining, self._chunked = 0, False
        else:
            self._remaining, self._chunked = length or 0, chunked
        return b"".join(lines)

    def _encode_usual_head(self, status: int, headers: Headers, reason: bytes) -> bytes | None:
        """The head of the usual response, from lines remembered by ``_encode_head``: a
        status and fields seen before, a lowercase ``content-length`` and no other framing
        field; None for anything else (``_encode_head`` then works it out in full). When
        the client asked to close, ``Connection: close`` comes last, as h11 writes it."""
        status_line = _STATUS_LINES.get((status, reason))
        if status_line is None:
            return None
        lines = [status_line, _SERVER_LINE]
        length = None
        for field in headers:
            line = _USUAL_FIELD_LINES.get(field)
            if line is None:
                name, value = field
                if name != b"content-length" or length is not None or not value.isdigit():
                    return None
                length = int(value)
                line = b"content-length: %s\r\n" % value
            lines.append(line)
        if length is None:
            return None                 # chunked or bodyless: the full rules
        lines.append(_CLOSE_END if self._close else b"\r\n")
        if status in (204, 304) or self.request.method == "HEAD":
            self._remaining, self._chunked = 0, False
        else:
            self._remaining, self._chunked = length, False
        return b"".join(lines)

    async def write(self, data: bytes) -> None:
        conn = self._conn
        if conn._closed:
            raise ClientGone("connection closed")
        if self.ended or not self.started:
            raise ResponseFramingError("body data outside a response")
        if not data:
            return
        if self._chunked:
            conn._channel.write(b"%x\r\n%s\r\n" % (len(data), data) if len(data) < 4096
                                else b"%x\r\n" % len(data))
            if len(data) >= 4096:       # no copy of a large chunk
                conn._channel.write(data)
                conn._channel.write(b"\r\n")
        else:
            self._remaining -= len(data)
            if self._remaining < 0:
                raise ResponseFramingError("more data than the declared Content-Length")
            conn._channel.write(data)
        await conn._channel.drain()

    def _finish(self, conn: H1Connection) -> None:
        if self._remaining:
            raise ResponseFramingError("less data than the declared Content-Length")
        self.ended = True
        if self._chunked:
            conn._channel.write(b"0\r\n\r\n")
        conn._direct_complete(self._close)


# A reason phrase that cannot end the status line early.
_REASON = re.compile(rb"[^\x00\r\n]*")
# Response head lines checked once (see remember_field): status lines by (status, reason),
# and fields that are neither framing nor routing, by field.
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}
_USUAL_FIELD_LINES: dict[tuple[bytes, bytes], bytes] = {}
_FRAMING_FIELDS = frozenset((b"content-length", b"transfer-encoding", b"connection", b"host"))
_SERVER_LINE = b"%s: %s\r\n" % SERVER_HEADER
_CLOSE_END = b"Connection: close\r\n\r\n"
# The request grammar the direct path accepts (RFC 9112 §3, §5; RFC 9110 §5.6.2 tokens),
# stricter than h11's: visible ASCII, inner spaces/tabs. obs-text and anything odd goes to
# h11, which accepts or refuses it with its own message.
_REQUEST_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/1\.1")
_FIELD_LINE = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e](?:[ \t\x21-\x7e]*[\x21-\x7e])?)?)[ \t]*")
# What an empty line before a request line starts with (RFC 9112 §2.2).
_EMPTY_LINE_START = (b"\r", b"\n")
# Fields whose handling needs h11's state machine.
_NEEDS_H11 = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"te"))
# Request lines and field lines read before (see remember_field): request line ->
# (method, target); field line -> (field, kind).
_REQUEST_LINES: dict[bytes, tuple[bytes, bytes]] = {}
_FIELD_LINES: dict[bytes, tuple[tuple[bytes, bytes], object]] = {}
_ORDINARY, _HOST, _LENGTH, _CONNECTION = object(), object(), object(), object()
_FIELD_KINDS = {b"host": _HOST, b"content-length": _LENGTH, b"connection": _CONNECTION}


class PlainRequest(NamedTuple):
    method: bytes
    target: bytes
    headers: Headers            # names lowercased, values without surrounding whitespace
    body: bytes                 # the start of the body (all of it when it came whole)
    length: int                 # Content-Length (0 without one)
    close: bool                 # Connection: close


def parse_plain_request(data: bytes, max_header_size: int) -> PlainRequest | None:
    """``data`` as one whole plain HTTP/1.1 request, or None when h11 must handle it.

    Plain: one whole head in ``data`` and nothing after the body's end (no pipelining), a
    request line and field lines in the strict grammar, one Host, no body or a
    Content-Length one (the rest of it may follow in later reads), no Transfer-Encoding,
    Expect, Upgrade or CONNECT.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > 2 * max_header_size:
        return None
    lines = data[:end].split(b"\r\n")
    method_target = _REQUEST_LINES.get(lines[0])
    if method_target is None:
        first = _REQUEST_LINE.fullmatch(lines[0])
        if first is None or first[1] == b"CONNECT":
            return None
        method_target = first[1], first[2]
        remember(_REQUEST_LINES, lines[0], method_target, len(lines[0]))
    method, target = method_target
    # measured as H1Connection._reject_head measures it, so both paths send 431 alike
    size = len(method) + len(target) + 12
    headers: Headers = []
    hosts = 0
    length = None
    close = False
    for line in lines[1:]:
        known = _FIELD_LINES.get(line)
        if known is None:
            known = _read_field_line(line)
            if known is None:
                return None
        field, kind = known
        if kind is not _ORDINARY:
            value = field[1]
            if kind is _HOST:
                hosts += 1
            elif kind is _LENGTH:
                if length is not None or not value.isdigit() or len(value) > 15:
                    return None
                length = int(value)
            else:                                   # _CONNECTION
                tokens = comma_tokens(value)
                if b"upgrade" in tokens:
                    return None
                close = close or b"close" in tokens
        headers.append(field)
        size += len(field[0]) + len(field[1]) + 4
    body = data[end + 4:]
    if hosts != 1 or len(body) > (length or 0) or size > max_header_size:
        return None
    return PlainRequest(method, target, headers, body, length or 0, close)


def _read_field_line(line: bytes) -> tuple[tuple[bytes, bytes], object] | None:
    """A field line in the direct path's grammar as ((lowercased name, value), kind), kept
    in ``_FIELD_LINES``; None when h11 must handle it (bad grammar, a field h11 handles)."""
    match = _FIELD_LINE.fullmatch(line)
    if match is None:
        return None
    name = match[1].lower()
    if name in _NEEDS_H11:
        return None
    known = ((name, match[2]), _FIELD_KINDS.get(name, _ORDINARY))
    remember(_FIELD_LINES, line, known, len(line))
    return known


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


_REASONS = {code: phrase.encode("ascii") for code, phrase in STATUS_PHRASES.items()}


def _is_chunked(headers: Headers) -> bool:
    return any(name == b"transfer-encoding" for name, _ in headers)


def _plain_error(status: int, message: bytes) -> bytes:
    reason = _ERROR_MESSAGES.get(status) or _reason(status) or b"Error"
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(message), message))
