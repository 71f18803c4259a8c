"""The two paths of the HTTP/1.1 adapter answer alike: every case runs once as tlsgate runs it
(plain requests on the direct path) and once with the direct path off (everything through
h11), in memory, and both must give what RFC 9112 asks for.

The cases are the differences a differential fuzz of the two paths found (session 5): input
after ``Connection: close``, response heads that cannot be sent, framing a handler gets
wrong, the unread rest of a body, the discard limit.
"""

from __future__ import annotations

import asyncio

import pytest

import tlsgate.http.h1 as h1
from tlsgate.http.base import HTTPLimits
from tlsgate.http.messages import ClientGone, ConnectionInfo

GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


class Channel:
    """The PlaintextChannel the adapter writes to; request tasks run on the test's loop."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = self.aborted = False
        self.tasks: list[asyncio.Task] = []
        self.failures: list[BaseException] = []
        self.active = 0

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    async def drain(self) -> None: ...

    def spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        # As GatewayConnection does: a handler's failure is taken (here: kept), never left
        # for the garbage collector to report.
        if not task.cancelled() and task.exception() is not None:
            self.failures.append(task.exception())

    def request_started(self) -> None:
        self.active += 1

    def request_finished(self) -> None:
        self.active -= 1

    async def client_certificate(self, request):
        return None

    @property
    def wire(self) -> bytes:
        return b"".join(self.written)


@pytest.fixture(params=[True, False], ids=["direct", "h11"])
def direct(request, monkeypatch) -> bool:
    if not request.param:
        monkeypatch.setattr(h1, "parse_plain_request", lambda data, limit: None)
    monkeypatch.setattr(h1, "LINGER_QUIET", 1e6)       # lingering is seen by state here
    return request.param


def serve(reads: list[bytes], handler, *, settle_between: bool = True) -> Channel:
    """Feed ``reads`` to a new connection, letting request tasks run between reads (or only
    after the last one); the channel shows what the client got."""
    channel = Channel()

    async def run() -> None:
        conn = h1.H1Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                               handler, HTTPLimits())
        for data in reads:
            conn.receive_data(data)
            if settle_between:
                await settle()
        await settle()
        for task in channel.tasks:
            if not task.done():
                task.cancel()
    asyncio.run(run())
    return channel


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def answer(status: int = 200, headers=((b"content-length", b"2"),), chunks=(b"ok",), *,
           reason: bytes | None = None, start: bool = True, read_after: list | None = None):
    async def handler(request, sink):
        if start:
            await sink.start(status, list(headers), reason=reason)
        for chunk in chunks:
            await sink.write(chunk)
            await asyncio.sleep(0)
        await sink.end()
        if read_after is not None:
            try:
                while await request.body.read_chunk():
                    pass
            except ClientGone as exc:
                read_after.append(exc)
    return handler


def test_input_after_connection_close_is_ignored_and_the_answer_goes_out(direct):
    # RFC 9112 §9.6: answer the request that said close, process nothing after it.
    channel = serve([GET_CLOSE, b"X"], answer(), settle_between=False)
    assert channel.wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert channel.wire.endswith(b"Connection: close\r\n\r\nok")
    assert channel.closed and not channel.aborted


@pytest.mark.parametrize("wire", [
    GET_CLOSE + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",            # a request behind it
    b"GET / HTTP/1.0\r\n\r\n\r\n",                                       # a stray CRLF
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabcX",
], ids=["pipelined", "http10-crlf", "post-body-then-more"])
def test_input_behind_a_closing_request_in_the_same_read_is_ignored_too(direct, wire):
    channel = serve([wire], answer())
    assert channel.wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert channel.wire.count(b"HTTP/1.1 ") == 1 and channel.closed


def test_http10_body_delimited_by_close_is_not_cut_by_later_input(direct):
    channel = serve([b"GET / HTTP/1.0\r\n\r\n", b"X"], answer(headers=(), chunks=[b"a"] * 5),
                    settle_between=False)
    assert channel.wire.endswith(b"\r\n\r\naaaaa") and channel.closed


@pytest.mark.parametrize("status, headers, reason", [
    (103, [], None),                                  # an interim status as the answer
    (200, [(b"x-a", b" leading space")], None),       # a field h11 refuses
    (200, [], b"OK\r\nx-injected: 1"),               # a reason that would end the line
])
def test_a_head_that_cannot_be_sent_is_answered_500(direct, status, headers, reason):
    channel = serve([GET], answer(status, headers, (), reason=reason))
    assert channel.wire.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert channel.closed


def test_empty_connection_tokens_are_not_sent(direct):
    channel = serve([GET_CLOSE], answer(headers=[(b"content-length", b"2"),
                                                 (b"connection", b"")]))
    assert b"Connection: \r\n" not in channel.wire
    assert channel.wire.endswith(b"Connection: close\r\n\r\nok")


def test_a_body_shorter_than_its_content_length_drops_the_connection(direct, caplog):
    # The head is out: dropping the connection is the only honest signal left. The
    # handler's bug is logged with its traceback (not left to the garbage collector).
    channel = serve([GET], answer(headers=[(b"content-length", b"5")]))
    assert channel.wire.endswith(b"\r\n\r\nok") and channel.aborted
    failed = [r for r in caplog.records if r.getMessage().startswith("request handler failed")]
    assert [type(r.exc_info[1]) for r in failed] == [h1.ResponseFramingError]
    assert channel.failures == []           # the connection's request task itself goes on


def test_a_response_ended_before_its_head_is_a_500_and_the_next_answer_is_not_shifted(
        direct):
    channel = serve([GET, GET], answer(start=False, chunks=()))
    assert channel.wire.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert channel.wire.count(b"HTTP/1.1") == 1 and channel.closed


def test_a_handler_reading_the_body_after_its_answer_learns_the_rest_was_dropped(direct):
    errors: list[ClientGone] = []
    channel = serve([b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234",
                     b"56789", GET], answer(read_after=errors))
    assert len(errors) == 1                            # not a hang, not a short body
    assert channel.wire.count(b"HTTP/1.1 200 OK") == 2 and channel.active == 0


def test_a_body_of_exactly_the_discard_limit_keeps_the_connection(direct):
    # Past DISCARD_LIMIT unread body bytes the connection closes; at the limit it goes on.
    limit = h1.DISCARD_LIMIT
    head = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % limit
    channel = serve([head] + [b"x" * (1 << 20)] * (limit >> 20) + [GET], answer())
    assert channel.wire.count(b"HTTP/1.1 200 OK") == 2 and not channel.closed


POST_ABC = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"


@pytest.mark.parametrize("reads, answers", [
    ([b"\r\n" + GET], 1),                                    # before the first request
    ([POST_ABC + b"\r\n", GET], 2),                          # after a body, same read
    ([POST_ABC, b"\r\n", GET], 2),                           # after a body, own read
    ([GET, b"\n", GET], 2),                                   # a bare LF
    ([GET, b"\r\n\r\n" + GET], 2),                            # more than one
], ids=["leading", "after-body-same-read", "after-body-own-read", "bare-lf", "two"])
def test_empty_lines_before_a_request_line_are_ignored(direct, reads, answers):
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request line
    # (old clients send a CRLF after a POST body); nginx does.
    channel = serve(reads, answer())
    assert channel.wire.count(b"HTTP/1.1 200 OK") == answers
    assert b"400" not in channel.wire and not channel.closed


def test_a_client_closing_behind_an_empty_line_is_closed_after_its_answer(direct):
    channel = Channel()

    async def run() -> None:
        conn = h1.H1Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                               answer(), HTTPLimits())
        conn.receive_data(POST_ABC + b"\r\n")
        conn.receive_eof()
        await settle()
    asyncio.run(run())
    assert channel.wire.count(b"HTTP/1.1 200 OK") == 1 and channel.closed


# -- remembered lines: the direct path keeps field lines it has checked (request fields and
# -- response head lines) and reuses them; the second request must read and be answered
# -- byte for byte as the first, and as h11 answers.

@pytest.mark.parametrize("status, headers, reason, method", [
    (200, [(b"content-type", b"text/plain"), (b"content-length", b"2")], None, b"GET"),
    (200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"2")], None, b"GET"),
    (200, [(b"x-a", b"1")], None, b"GET"),                         # no length: chunked
    (200, [(b"x-a", b"1"), (b"content-length", b"2")], None, b"HEAD"),
    (204, [(b"x-a", b"1"), (b"content-length", b"0")], None, b"GET"),
    (304, [(b"etag", b'"v1"')], None, b"GET"),
    (403, [(b"content-length", b"2")], b"Invalid client certificate", b"GET"),
    (200, [(b"connection", b"close"), (b"content-length", b"2")], None, b"GET"),
    (200, [(b"x-a", b"1"), (b"host", b"h"), (b"content-length", b"2")], None, b"GET"),
], ids=["usual", "capitalised", "chunked", "head", "204", "304", "reason", "close", "host"])
def test_a_head_written_again_from_remembered_lines_is_the_same(
        monkeypatch, status, headers, reason, method):
    monkeypatch.setattr(h1, "LINGER_QUIET", 1e6)
    request = method + b" / HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n"
    body = () if status in (204, 304) or method == b"HEAD" else (b"ok",)
    handler = answer(status, headers, body, reason=reason)
    h1._STATUS_LINES.clear()
    h1._USUAL_FIELD_LINES.clear()
    direct = serve([request, request], handler)
    with monkeypatch.context() as patch:
        patch.setattr(h1, "parse_plain_request", lambda data, limit: None)
        through_h11 = serve([request, request], handler)
    first, _, second = direct.wire.partition(b"HTTP/1.1 ")[2].partition(b"HTTP/1.1 ")
    if b"close" in direct.wire:                          # one answer, then the connection closes
        assert direct.wire == through_h11.wire and not second
        return
    assert b"HTTP/1.1 " + first == b"HTTP/1.1 " + second
    assert direct.wire == through_h11.wire


def test_a_request_read_again_from_remembered_lines_is_the_same():
    wire = (b"POST /a?b HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\n"
            b"Connection: keep-alive\r\nX-Odd:  spaced  value \r\n\r\nok")
    h1._FIELD_LINES.clear()
    first = h1.parse_plain_request(wire, 65536)
    assert first is not None and h1._FIELD_LINES
    assert h1.parse_plain_request(wire, 65536) == first
    assert first.headers == [(b"host", b"h:1"), (b"content-length", b"2"),
                             (b"connection", b"keep-alive"), (b"x-odd", b"spaced  value")]
    # What decides the path is still checked per request, not taken from the memo.
    assert h1.parse_plain_request(wire.replace(b"Host: h:1\r\n", b""), 65536) is None
    twice = wire.replace(b"Content-Length: 2\r\n", b"Content-Length: 2\r\nContent-Length: 2\r\n")
    assert h1.parse_plain_request(twice, 65536) is None
    assert h1.parse_plain_request(wire.replace(b"keep-alive", b"upgrade"), 65536) is None
    assert h1.parse_plain_request(wire.replace(b"keep-alive", b"close"), 65536).close
    connect = b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\n"
    assert h1.parse_plain_request(connect, 65536) is None
    assert h1.parse_plain_request(connect, 65536) is None


def test_a_connection_lost_before_its_request_task_ran_leaves_nothing_behind(recwarn):
    """Requests run in one task per connection; when the connection goes before that task
    first runs (a request and a reset in one read), the queued request is dropped: no
    'coroutine was never awaited', and the adapter is freed by reference counting."""
    import gc
    import weakref

    async def run() -> weakref.ref:
        channel = Channel()
        conn = h1.H1Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                               answer(), HTTPLimits())
        conn.receive_data(GET)
        conn.connection_lost()
        for task in channel.tasks:          # as GatewayConnection.connection_lost does
            task.cancel()
        await settle()
        assert all(task.cancelled() for task in channel.tasks) and channel.wire == b""
        channel.tasks.clear()
        return weakref.ref(conn)

    gc.collect()
    gc.disable()
    try:
        adapter = asyncio.run(run())
        assert adapter() is None
    finally:
        gc.enable()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


@pytest.mark.parametrize("status, headers, body, method", [
    (200, [(b"content-type", b"a/b"), (b"content-length", b"2")], b"ok", b"GET"),
    (200, [(b"content-length", b"0")], b"", b"GET"),
    (200, [(b"x-a", b"1")], b"no length: chunked", b"GET"),
    (200, [(b"content-length", b"2")], b"ok", b"HEAD"),
    (204, [], b"", b"GET"),
    (200, [(b"content-length", b"5")], b"ok", b"GET"),               # shorter than said
    (200, [(b"content-length", b"1")], b"ok", b"GET"),               # longer than said
    (200, [(b"content-length", b"20000")], b"z" * 20000, b"GET"),    # past the join size
    (200, [(b"connection", b"close"), (b"x-a", b"1")], b"ok", b"GET"),  # handler's close
    (200, [(b"connection", b"keep-alive, close"), (b"content-length", b"5")], b"ok", b"GET"),
], ids=["exact", "empty", "chunked", "head", "204", "short", "long", "large",
        "own-close-chunked", "own-close-short"])
def test_the_gateway_writes_a_whole_response_as_h11_does(
        monkeypatch, status, headers, body, method):
    """The gateway hands a bytes body to the direct path's sink in one step (send_whole)
    when it fits its Content-Length; any other shape goes the usual way. Either way the
    client gets what h11 would send, and a framing error still drops the connection."""
    from tlsgate.http.messages import Response
    from tlsgate.pipeline.gateway import _Progress, _send

    monkeypatch.setattr(h1, "LINGER_QUIET", 1e6)

    async def handler(request, sink):
        await _send(sink, Response(status, list(headers), body), _Progress(),
                    head_only=request.method == "HEAD")

    wire = method + b" / HTTP/1.1\r\nHost: h\r\n\r\n"
    direct = serve([wire, wire], handler)
    with monkeypatch.context() as patch:
        patch.setattr(h1, "parse_plain_request", lambda data, limit: None)
        through_h11 = serve([wire, wire], handler)
    assert direct.wire == through_h11.wire
    assert (direct.aborted, direct.closed) == (through_h11.aborted, through_h11.closed)


def test_a_whole_response_to_a_closing_request_is_sent_even_if_drain_then_fails():
    """The response closes the connection (Connection: close); when the flush that ends it
    leaves the transport over its high-water mark, drain() says ClientGone. The response
    went out whole before that: it is not a client that left (no 499 in the log)."""
    from tlsgate.http.messages import Response
    from tlsgate.pipeline.gateway import _Progress, _send

    class ClosingChannel(Channel):
        async def drain(self) -> None:
            if self.closed:
                raise ClientGone("closing, and the transport is full")

    outcome = []

    async def handler(request, sink):
        progress = _Progress()
        try:
            await _send(sink, Response(200, [(b"content-length", b"2")], b"ok"), progress)
            outcome.append(("sent", progress.sent))
        except ClientGone:
            outcome.append(("client gone", progress.sent))

    channel = ClosingChannel()

    async def run() -> None:
        conn = h1.H1Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                               handler, HTTPLimits())
        conn.receive_data(GET_CLOSE)
        await settle()
    asyncio.run(run())
    assert outcome == [("sent", 2)]
    assert channel.wire.endswith(b"\r\n\r\nok") and channel.closed


def test_remembered_status_lines_stay_bounded(monkeypatch):
    """A policy may compute a reason phrase from the request: long ones are not kept and
    the memo is emptied when full, like the field memos."""
    import tlsgate.http.base as base

    monkeypatch.setattr(base, "FIELD_MEMO_ENTRIES", 3)
    h1._STATUS_LINES.clear()
    conn = h1.H1Connection(Channel(), ConnectionInfo(("127.0.0.1", 1)),
                           answer(), HTTPLimits())
    sink = h1.DirectResponseSink(conn, False)
    sink.request = type("R", (), {"method": "GET"})()
    fields = [(b"content-length", b"0")]
    long_reason = b"x" * (base.FIELD_MEMO_MAX_BYTES + 1)
    assert sink._encode_head(400, fields, long_reason).startswith(b"HTTP/1.1 400 x")
    assert h1._STATUS_LINES == {}
    for number in range(7):
        reason = b"reason %d" % number
        assert sink._encode_head(400, fields, reason).startswith(b"HTTP/1.1 400 " + reason)
        assert len(h1._STATUS_LINES) <= 3
    h1._STATUS_LINES.clear()


def test_a_handler_raising_cancelled_error_loses_no_pipelined_request(direct):
    """Requests share one task per connection: a handler's own CancelledError (not the
    connection's) ends its request only; the request pipelined behind it is answered."""
    async def handler(request, sink):
        await sink.start(200, [(b"content-length", b"2")])
        await sink.end(b"ok")
        if request.path == "/1":
            raise asyncio.CancelledError()

    channel = serve([b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"],
                    handler)
    assert channel.wire.count(b"HTTP/1.1 200 OK") == 2
    assert channel.active == 0
