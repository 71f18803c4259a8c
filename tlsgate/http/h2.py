"""HTTP/2 over tlsgate's sans-IO engine: multiplexed streams, flow control both ways, limits.

Each stream becomes a :class:`Request` served by its own task. Request bodies are paced by
HTTP/2 flow control: received DATA is acknowledged (the window reopened) only when the
pipeline has consumed it, so a slow backend slows the client instead of filling memory.
Response bodies wait for the client's window the same way.

:mod:`tlsgate.http.h2_engine` runs the frames, HPACK and stream states; header blocks are
checked and read by :mod:`tlsgate.http.h2_fields` (a malformed request resets its stream
only). The request rules a stream's framing cannot tell are enforced here: Content-Length
against the DATA received (a mismatch is a malformed request), an oversized header list
gets 431 on its stream (a connection error only past a hard cap), and streams past
SETTINGS_MAX_CONCURRENT_STREAMS are refused one by one with REFUSED_STREAM, which clients
retry (RFC 9113 §5.1.2, as nginx does), instead of the whole connection failing.
"""

from __future__ import annotations

import asyncio
import logging

from tlsgate.http import h2_engine
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
    remember_field,
)
from tlsgate.http.h2_engine import ErrorCode, StreamClosed
from tlsgate.http.h2_fields import (
    CONNECTION_FIELDS,
    MalformedHeaders,
    ResponseFieldEncoder,
    read_request,
    trailer_problem,
)
from tlsgate.http.messages import (
    ClientGone,
    ConnectionInfo,
    Headers,
    HTTP11Required,
    Request,
    RequestBody,
)
from tlsgate.pipeline.access_log import log_refused

log = logging.getLogger("tlsgate.http2")
# Streams answered early whose request bodies are read and dropped at the same time (per
# connection); see H2Connection._drain.
_DRAINING_MAX = 8

# The largest DATA frame sent, whatever larger frames the client allows (Go's client allows
# 1 MiB): a frame is written before the socket is asked to drain, so this bounds what one
# stream adds to a backed-up socket.
_MAX_DATA_FRAME = 65536

# Response fields HTTP/2 drops: the connection-specific ones (RFC 9113 §8.2.2), and TE, a
# request field only.
_DROPPED_RESPONSE_FIELDS = CONNECTION_FIELDS | {b"te"}


def _expects_continue(fields) -> bool:
    for name, value in fields:
        if name == b"expect":
            return value.strip().lower() == b"100-continue"
    return False


class _Stream:
    __slots__ = ("id", "body", "task", "window_waiter", "closed", "unacked", "received",
                 "started", "released", "head_sent")

    def __init__(self, stream_id: int, body: RequestBody) -> None:
        self.id = stream_id
        self.body = body
        self.received = 0           # body bytes, checked against Content-Length
        self.task: asyncio.Task[None] | None = None
        self.window_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.started = False        # its task has begun running (see H2Connection._release)
        self.released = False
        self.head_sent = False      # the response head went out (no 100 Continue after it)
        # DATA bytes received but not yet handed back to the client's window: returned when
        # the body is consumed, or all at once when the stream ends (an unread body, a 413).
        self.unacked = 0

    def wake(self) -> None:
        waiter = self.window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class H2Connection:
    def __init__(self, channel: PlaintextChannel, info: ConnectionInfo,
                 handler: RequestHandler, limits: HTTPLimits) -> None:
        self._channel = channel
        self._info = info
        self._handler = handler
        self._limits = limits
        self._streams: dict[int, _Stream] = {}
        # Streams answered before their request body ended: body bytes dropped so far.
        self._draining: dict[int, int] = {}
        self._closed = False
        #: Loop time the connection's receive window last reopened: a stream's body is not
        #: counted as stalled from before then (see bodies_in_progress).
        self.input_resumed_at = 0.0
        self._peer_going_away = False   # the client sent GOAWAY(NO_ERROR): finish, then close
        self._h2 = h2_engine.ServerConnection(
            encoder=ResponseFieldEncoder(),
            max_concurrent_streams=limits.max_concurrent_streams,
            max_header_list_size=limits.max_header_size,
            # HPACK decoding stops at a hard cap (a connection error beyond it); lists
            # between max_header_size and the cap are decoded and answered 431 on their
            # stream only.
            header_block_cap=max(4 * limits.max_header_size, 65536),
            initial_window=limits.h2_stream_window,
            connection_window=limits.h2_connection_window)
        self._h2.initiate_connection()
        self._flush()

    @property
    def busy(self) -> bool:
        return bool(self._streams)

    def bodies_in_progress(self) -> list[RequestBody]:
        """Request bodies still arriving, unanswered, that the client is free to send (for
        the connection's stalled-body check). Not the client's stall: a body held back by a
        closed flow-control window (the connection's, filled by other streams' unread
        bodies), or one whose response has begun (a client may stop sending then)."""
        return [stream.body for stream in self._streams.values()
                if not stream.body.complete and not stream.head_sent
                and self._h2.may_receive(stream.id)]

    def _acknowledge(self, size: int, stream_id: int) -> None:
        """Give ``size`` consumed bytes back to the client's windows, noting when that
        reopens a closed connection window (``input_resumed_at``)."""
        was_closed = not self._h2.receive_window_open
        self._h2.acknowledge_received_data(size, stream_id)
        if was_closed and self._h2.receive_window_open:
            self.input_resumed_at = asyncio.get_running_loop().time()

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self._h2.receive_data(data)
        except h2_engine.ConnectionFailure:
            self._flush()       # the engine queued a GOAWAY with the error code
            self._shutdown()
            return
        except Exception:       # a bug of ours: this connection ends, the process goes on
            log.exception("HTTP/2 engine failed on input from %s; connection closed",
                          self._info.client_address)
            self._h2.close_connection(ErrorCode.INTERNAL_ERROR)
            self._flush()
            self._shutdown()
            return
        for event in events:
            if self._closed:
                break
            self._dispatch(event)
        self._flush()

    def receive_eof(self) -> None:
        self._shutdown()

    def connection_lost(self) -> None:
        self._closed = True
        for stream in list(self._streams.values()):
            self._fail_stream(stream, ClientGone("connection closed"))

    def _dispatch(self, event) -> None:
        kind = type(event)
        if kind is h2_engine.DataReceived:
            self._on_data(event)
        elif kind is h2_engine.RequestReceived:
            self._on_request(event)
        elif kind is h2_engine.WindowUpdated:
            self._on_window_updated(event.stream_id)
        elif kind is h2_engine.TrailersReceived:
            self._on_trailers(event)
        elif kind is h2_engine.StreamReset:
            self._draining.pop(event.stream_id, None)
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                why = "reset by the client" if event.remote else "reset for a protocol error"
                self._fail_stream(stream, ClientGone(f"stream {why}"))
        elif kind is h2_engine.ConnectionTerminated:
            if event.error_code == ErrorCode.NO_ERROR and self._streams:
                # A graceful GOAWAY: no new streams come; those in flight are answered.
                self._peer_going_away = True
            else:
                self._shutdown()

    def _on_request(self, event: h2_engine.RequestReceived) -> None:
        if not self._h2.is_open(event.stream_id):
            return              # reset in the same read, after its head: nothing to serve
        try:
            head = read_request(event.headers)
        except MalformedHeaders as exc:
            self._refuse_malformed(event.stream_id, str(exc))
            return
        if len(self._streams) >= self._limits.max_concurrent_streams:
            # Past SETTINGS_MAX_CONCURRENT_STREAMS: refuse this stream only; the client may
            # retry it (RFC 9113 §8.7). Its DATA is credited back by the engine (reset stream).
            log_refused(self._info, 0, "REFUSED_STREAM: concurrent stream limit",
                        http_version="2")
            self._reset(event.stream_id, ErrorCode.REFUSED_STREAM)
            return
        if head.head_size > self._limits.max_header_size:
            self._answer_431(event.stream_id, ended=event.ended)
            return
        ended = event.ended
        if ended and head.content_length:
            self._refuse_malformed(event.stream_id, f"Content-Length of "
                                   f"{head.content_length} on a request without a body")
            return
        body = RequestBody(0 if ended else head.content_length,
                           high_water=self._limits.h2_stream_window)
        stream = _Stream(event.stream_id, body)
        if ended:
            body.finish()
        else:
            body.on_consumed = lambda n, sid=event.stream_id: self._ack_data(sid, n)
            if _expects_continue(head.fields):
                body.on_first_read = lambda: self._send_continue(stream)
        self._streams[event.stream_id] = stream
        raw_path, _, query = head.path.partition(b"?")
        request = Request(
            method=head.method.decode("ascii", "replace"),
            path=raw_path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers=head.fields,
            body=body,
            connection=self._info,
            http_version="2",
            authority=head.authority.decode("latin-1"),
        )
        attach_certificate_source(request, self._channel)
        self._channel.request_started()
        stream.task = self._channel.spawn(self._run(stream, request))

    def _on_trailers(self, event: h2_engine.TrailersReceived) -> None:
        # Trailers are checked, then dropped: nothing downstream reads request trailers.
        if self._draining.pop(event.stream_id, None) is not None:
            return
        stream = self._streams.get(event.stream_id)
        problem = trailer_problem(event.headers)
        if problem is None and stream is not None:
            problem = self._length_problem(stream, ended=True)
        if problem is None:
            if stream is not None:
                stream.body.finish()
            return
        self._refuse_malformed(event.stream_id, problem)

    def _send_continue(self, stream: _Stream) -> None:
        """``Expect: 100-continue``: the body is about to be read, so the client may send it
        now (RFC 9110 §10.1.1, HTTP/2 included); as HTTP/1.1 does. Without it, curl waits a
        second before sending its body."""
        if self._closed or stream.closed or stream.head_sent:
            return
        self._h2.send_headers(stream.id, [(b":status", b"100")])
        self._flush()

    def _refuse_malformed(self, stream_id: int, problem: str) -> None:
        """A malformed request is a stream error (RFC 9113 §8.1.1); the connection stays."""
        log_refused(self._info, 0, f"PROTOCOL_ERROR: malformed request: {problem}",
                    http_version="2")
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._fail_stream(stream, ClientGone(f"malformed request: {problem}"))
        self._reset(stream_id, ErrorCode.PROTOCOL_ERROR)

    def _on_data(self, event: h2_engine.DataReceived) -> None:
        if event.stream_id in self._draining:
            self._discard(event)
            return
        stream = self._streams.get(event.stream_id)
        data = event.data
        if stream is None or stream.closed:
            # Data for a stream we gave up on still counts against the connection window.
            self._acknowledge(len(data), event.stream_id)
            return
        stream.received += len(data)
        problem = self._length_problem(stream, ended=event.ended)
        if problem is not None:
            self._acknowledge(len(data), event.stream_id)
            self._refuse_malformed(stream.id, problem)
            return
        stream.unacked += len(data)
        stream.body.feed(data)
        if event.ended:
            stream.body.finish()

    def _drain(self, stream_id: int) -> None:
        """The stream was answered before its request body ended: read the rest and drop it,
        as HTTP/1.1 does, rather than reset the stream at once. RFC 9113 §8.1 allows a
        RST_STREAM(NO_ERROR) there, but clients such as curl then throw the answer away
        (a 413 became "Stream error in the HTTP/2 framing layer"). At most _DRAINING_MAX
        streams drain at a time (each still holds a stream slot of the client's): past it
        the oldest is reset."""
        if self._closed or not self._h2.awaits_data(stream_id):
            return
        if len(self._draining) >= _DRAINING_MAX:
            oldest = next(iter(self._draining))
            del self._draining[oldest]
            self._reset(oldest, ErrorCode.NO_ERROR)
        self._draining[stream_id] = 0

    def _discard(self, event: h2_engine.DataReceived) -> None:
        stream_id = event.stream_id
        self._acknowledge(len(event.data), stream_id)
        dropped = self._draining[stream_id] + len(event.data)
        if event.ended:
            del self._draining[stream_id]
        elif dropped > DISCARD_LIMIT:
            del self._draining[stream_id]
            self._reset(stream_id, ErrorCode.NO_ERROR)    # enough: stop the upload
        else:
            self._draining[stream_id] = dropped

    @staticmethod
    def _length_problem(stream: _Stream, *, ended: bool) -> str | None:
        """A body longer than its Content-Length, or one that ended shorter (§8.1.1)."""
        expected = stream.body.content_length
        if expected is None or (stream.received < expected and not ended):
            return None
        if stream.received != expected:
            return f"{stream.received} body bytes against a Content-Length of {expected}"
        return None

    def _answer_431(self, stream_id: int, *, ended: bool) -> None:
        message = b"request header list larger than %d bytes" % self._limits.max_header_size
        log_refused(self._info, 431, message.decode(), http_version="2")
        fits = self._h2.local_flow_control_window(stream_id) >= len(message)
        headers = [(b":status", b"431"), SERVER_HEADER]
        if fits:        # else the status alone: a Content-Length must match the DATA sent
            headers += [(b"content-type", b"text/plain"),
                        (b"content-length", str(len(message)).encode())]
        self._h2.send_headers(stream_id, headers, end_stream=not fits)
        if fits:
            self._h2.send_data(stream_id, message, end_stream=True)
        if not ended:
            self._drain(stream_id)
        self._flush()

    def _ack_data(self, stream_id: int, size: int) -> None:
        stream = self._streams.get(stream_id)
        if self._closed or stream is None:
            return
        stream.unacked -= size
        self._acknowledge(size, stream_id)
        self._flush()

    def _on_window_updated(self, stream_id: int) -> None:
        if stream_id:
            stream = self._streams.get(stream_id)
            if stream is not None:
                stream.wake()
        else:
            for stream in self._streams.values():
                stream.wake()

    # -- per-stream task ------------------------------------------------------------------

    async def _run(self, stream: _Stream, request: Request) -> None:
        stream.started = True
        sink = H2ResponseSink(self, stream)
        try:
            await self._handler(request, sink)
        except ClientGone:
            pass
        except HTTP11Required:
            # A late client certificate is impossible on HTTP/2: a bare reset tells the
            # client to retry over HTTP/1.1 (curl does), as Apache answers.
            self.reset_stream(stream, ErrorCode.HTTP_1_1_REQUIRED)
            sink.ended = True
        finally:
            if not sink.ended:
                sink.abort()
            elif not stream.body.complete:
                self._drain(stream.id)          # answered before the request body ended
            self._release(stream)

    def _release(self, stream: _Stream) -> None:
        """A stream's end, once: forget it, give back the window its unread body holds, and
        tell the connection (idle timer). Called by its task, or by _fail_stream for a task
        cancelled before it began (its ``finally`` never runs)."""
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
        # A cancelled task keeps its CancelledError, whose traceback holds the _run frame
        # and so this stream: without this, task and stream would form a reference cycle.
        stream.task = None
        if stream.released:
            return
        stream.released = True
        if stream.unacked and not self._closed:
            # Body bytes nobody read still count against the connection window.
            self._acknowledge(stream.unacked, stream.id)
            stream.unacked = 0
            self._flush()
        self._channel.request_finished()
        if self._peer_going_away and not self._streams:
            self.close()

    def reset_stream(self, stream: _Stream, code: ErrorCode) -> None:
        """Abort one stream (e.g. HTTP_1_1_REQUIRED) and keep the connection."""
        if stream.closed or self._closed:
            return
        stream.closed = True
        self._reset(stream.id, code)

    def _reset(self, stream_id: int, code: ErrorCode) -> None:
        if self._closed:
            return
        try:
            self._h2.reset_stream(stream_id, code)
        except StreamClosed:
            return
        self._flush()

    def _fail_stream(self, stream: _Stream, error: Exception) -> None:
        stream.closed = True
        if not stream.body.complete:
            stream.body.fail(error)
        stream.wake()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
            if not stream.started:
                self._release(stream)

    # -- output ---------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._closed:
            return
        data = self._h2.data_to_send()
        if data:
            self._channel.write(data)

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams.values()):
            self._fail_stream(stream, ClientGone("connection closed"))
        self._channel.close()

    def close(self) -> None:
        """Graceful close: GOAWAY, then close the connection."""
        if not self._closed:
            self._h2.close_connection()
            self._flush()
            self._shutdown()


#: Response fields already normalized and checked, as sent (() for a dropped connection
#: field): a backend's usual fields are checked once (see remember_field).
_sendable: dict[tuple[bytes, bytes], tuple[bytes, bytes] | tuple[()]] = {}


def _sendable_field(field: tuple[bytes, bytes]) -> tuple[bytes, bytes] | tuple[()]:
    """A response field as HTTP/2 sends it (lowercase name, value without surrounding
    whitespace), () for a connection-specific field, which HTTP/2 drops (RFC 9113 §8.2.2).
    Raises ResponseFramingError for a field no HTTP version could send."""
    name, value = field[0].lower(), field[1].strip(b" \t")
    if name in _DROPPED_RESPONSE_FIELDS:
        sent = ()
    elif FIELD_NAME.fullmatch(name) and FIELD_VALUE.fullmatch(value):
        sent = (name, value)
    else:
        raise ResponseFramingError(f"illegal header {name!r}: {value!r}")
    remember_field(_sendable, (field[0], field[1]), sent)
    return sent


class H2ResponseSink:
    __slots__ = ("_conn", "_stream", "started", "ended")

    def __init__(self, conn: H2Connection, stream: _Stream) -> None:
        self._conn = conn
        self._stream = stream
        self.started = False
        self.ended = False

    def _check(self) -> None:
        if self._stream.closed or self._conn._closed:
            raise ClientGone("stream closed")

    async def start(self, status: int, headers: Headers, *, end_stream: bool = False,
                    reason: bytes | None = None) -> None:
        # HTTP/2 has no reason phrase: ``reason`` is accepted and dropped.
        self._check()
        if self.started:
            raise ResponseFramingError("a second response head")
        out = [(b":status", b"%d" % status), SERVER_HEADER]
        for field in headers:
            # h2's own outbound normalization and validation are off: _sendable_field does
            # what they did (lowercase, drop connection fields, check), remembering answers.
            sent = _sendable.get(field)
            if sent is None:
                sent = _sendable_field(field)
            if sent:
                out.append(sent)
        self.started = True
        conn = self._conn
        if end_stream:
            await conn._channel.drain()     # see end()
            self._check()
        self._stream.head_sent = True
        conn._h2.send_headers(self._stream.id, out, end_stream=end_stream)
        conn._flush()
        if end_stream:
            self._finished()

    async def write(self, data: bytes) -> None:
        conn, stream = self._conn, self._stream
        view = memoryview(data)
        while view:
            # Before each frame, not only after: streams woken together when the socket
            # drains would otherwise each add a frame to the backlog at once.
            await conn._channel.drain()
            self._check()
            window = min(conn._h2.local_flow_control_window(stream.id),
                         conn._h2.max_outbound_frame_size, _MAX_DATA_FRAME)
            if window <= 0:
                stream.window_waiter = asyncio.get_running_loop().create_future()
                try:
                    await stream.window_waiter
                finally:
                    stream.window_waiter = None
                continue
            conn._h2.send_data(stream.id, view[:window].tobytes())
            view = view[window:]
            conn._flush()
        await conn._channel.drain()

    async def end(self, data: bytes = b"") -> None:
        if self.ended:
            if data:
                raise ResponseFramingError("body data after the end of the response")
            return
        conn, stream_id = self._conn, self._stream.id
        # Wait while the socket is backed up *before* ending the stream: an open stream counts
        # against max_concurrent_streams, so a client that never reads cannot make answers
        # pile up here (returns at once otherwise).
        await conn._channel.drain()
        self._check()
        if data and len(data) <= min(conn._h2.local_flow_control_window(stream_id),
                                     conn._h2.max_outbound_frame_size, _MAX_DATA_FRAME):
            # the last bytes and END_STREAM in one DATA frame, not two frames
            conn._h2.send_data(stream_id, data, end_stream=True)
        else:
            if data:
                await self.write(data)
                self._check()
            conn._h2.end_stream(stream_id)
        conn._flush()
        self._finished()

    def _finished(self) -> None:
        self.ended = True
        self._stream.closed = True

    def abort(self) -> None:
        self.ended = True
        self._conn.reset_stream(self._stream, ErrorCode.INTERNAL_ERROR)
