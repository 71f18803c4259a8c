"""The load generator's connections and its per-process (or per-thread) worker.

One :class:`Worker` runs one event loop (uvloop when installed) and drives ``connections``
closed-loop clients: each sends a request, waits for the whole response, records the latency
and sends the next one at once. Everything on the hot path is a callback from
``data_received``; no task, future or timer is created per keep-alive request:

- :class:`H1Conn` speaks HTTP/1.1 with a minimal response parser (status line, then
  Content-Length or chunked; bodies are counted, never kept);
- :class:`H2Conn` speaks HTTP/2 through the h2 library (sans-IO), ``streams`` requests in
  flight per connection, with windows opened wide once so no WINDOW_UPDATE is needed per
  response;
- ``handshake``/``resume`` open a new connection per request (an :class:`H1Conn` that closes
  after one response); ``resume`` offers the previous connection's session;
- ``idle`` opens ``connections`` :class:`H1Conn` (``concurrency`` at a time), each sends one
  GET, and holds them open without another request until the coordinator ends the run.

Timeouts are found by a sweep every 100 ms rather than a timer per request. Errors are counted
by kind (:data:`ERROR_KINDS`) while measuring, never during warm-up.
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from array import array
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from tlsgate.bench.load_common import ERROR_KINDS, IDLE_CONCURRENCY, PERSISTENT_MODES
from tlsgate.bench.load_tls import ClientTLSSettings, TLSFailure, make_factory

_now = time.monotonic
_MAX_HEAD = 65536
_RECONNECT_DELAY = 0.05      # after a failed or lost connection, so a dead port never spins
_SWEEP_INTERVAL = 0.1
_CLOSE_GRACE = 1.0           # one-shot: wait this long for the server to close after us
_H2_WINDOW = 2**31 - 1


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs; picklable (sent to worker processes)."""

    index: int
    mode: str
    address: str
    port: int
    server_hostname: str | None     # SNI and certificate check (None: an IP literal target)
    authority: str                  # Host header / :authority
    path: str
    connections: int
    streams: int
    size: int
    expect_status: int
    timeout: float
    requests: int | None            # this worker's share of a count-based run
    tls: ClientTLSSettings
    in_thread: bool                 # CPU time of this thread only (the caller's process
                                    # may hold the server under test)
    concurrency: int = IDLE_CONCURRENCY   # idle: connections opening at once


@dataclass
class WorkerResult:
    index: int
    completed: int = 0
    latencies: bytes = b""          # array('d') of seconds, as bytes
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    handshakes: int = 0
    resumed: int = 0
    cpu_seconds: float = 0.0
    measure_start: float = 0.0
    measure_end: float = 0.0
    tls_info: dict[str, str | None] = field(default_factory=dict)


def cpu_clock(in_thread: bool):
    if in_thread:
        return time.thread_time

    def process_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    return process_cpu


# -- connections -------------------------------------------------------------------------------

class Conn(asyncio.Protocol):
    """TLS over a plain TCP transport; subclasses speak HTTP on top."""

    def __init__(self, worker: Worker, session=None) -> None:
        self.w = worker
        self.session = session
        self.transport = None
        self.tls = None
        self.t0 = 0.0                 # start of the request in flight (0: none)
        self.since = _now()           # connect start (handshake timeout)
        self.task: asyncio.Task | None = None   # the task connecting it (connect timeout)
        self.handshaken = False
        self.failed = False
        self.errored = False          # an error was counted against this connection
        self.closing = False          # one-shot: close_notify sent, waiting for the server's EOF
        self.waiter: asyncio.Future | None = None   # set when the connection is over
        self.ready: asyncio.Future | None = None    # set when the handshake is done

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.tls = self.w.tls_factory(transport, self.w.plan.server_hostname, self.session)
        try:
            self.tls.start()
        except TLSFailure as exc:
            self.fail("tls", str(exc))

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        tls = self.tls
        if tls.done:
            try:
                plaintext = tls.recv(data)
            except TLSFailure as exc:
                self.fail("tls", str(exc))
                return
            if plaintext:
                self.on_plaintext(plaintext)
            if tls.closed and not self.failed:
                self.on_peer_closed()
            return
        try:
            done = tls.handshake(data)
        except TLSFailure as exc:
            self.fail("tls", str(exc))
            return
        if done:
            self.handshaken = True
            self.w.on_handshake(self)
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(True)
            self.on_handshake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.failed and not self.w.stopping:
            if not self.handshaken:
                self.errored = True
                self.w.error("tls", "connection closed during the handshake")
            elif self.t0:
                self.errored = True
                self.w.error("closed", "connection closed with a request in flight")
        self.failed = True
        self.t0 = 0.0
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(False)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        self.w.on_lost(self)

    def fail(self, kind: str, detail: str) -> None:
        """Count one error and drop the connection (the worker reconnects)."""
        if self.failed:
            return
        self.failed = True
        self.errored = True
        self.t0 = 0.0
        self.w.error(kind, detail)
        if self.transport is not None:
            self.transport.abort()

    def on_peer_closed(self) -> None:
        if self.t0:
            self.fail("closed", "close_notify with a request in flight")
        else:
            self.failed = True
            self.transport.close()

    def expire(self, now: float, timeout: float) -> None:
        if not self.handshaken:
            if not self.failed and now - self.since > timeout:
                self.fail("timeout", f"no TLS handshake in {timeout:g} s")
            return
        self.expire_requests(now, timeout)

    def expire_requests(self, now: float, timeout: float) -> None:
        if not self.t0:
            return
        if self.closing:
            if now - self.t0 > _CLOSE_GRACE:      # the server kept it open: no error of ours
                self.t0 = 0.0
                self.transport.abort()
        elif now - self.t0 > timeout:
            self.fail("timeout", f"no complete response in {timeout:g} s")

    def on_handshake(self) -> None:
        raise NotImplementedError

    def on_plaintext(self, data: bytes) -> None:
        raise NotImplementedError

    def kick(self) -> None:
        """Start sending requests (keep-alive connections)."""


class H1Conn(Conn):
    """HTTP/1.1, one request at a time; ``oneshot`` closes after the first response."""

    def __init__(self, worker: Worker, session=None, oneshot: bool = False) -> None:
        super().__init__(worker, session)
        self.oneshot = oneshot
        self.request = worker.request
        self.head = b""               # an incomplete response head
        self.body_left = -1           # >= 0: Content-Length bytes still to come
        self.chunked: _Chunked | None = None
        self.status = 0
        self.close_after = False

    def on_handshake(self) -> None:
        if self.oneshot:
            self.t0 = self.t0 or _now()
            self.tls.send(self.request)
        elif self.w.running or self.w.idle:
            self.kick()

    def kick(self) -> None:
        if not self.failed and not self.t0 and not self.w.stopping:
            self.t0 = _now()
            self.tls.send(self.request)

    def on_plaintext(self, data: bytes) -> None:
        if self.body_left >= 0:
            left = self.body_left - len(data)
            if left > 0:
                self.body_left = left
                return
            self.body_left = -1
            if left < 0:
                self.fail("protocol", "more bytes than Content-Length")
                return
            self.response_done()
            return
        if self.chunked is not None:
            self.on_chunked(data)
            return
        if self.head:
            data = self.head + data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > _MAX_HEAD:
                self.fail("protocol", "response head too large")
            self.head = data
            return
        self.head = b""
        head = data[:end]
        if head[:7] != b"HTTP/1.":
            self.fail("protocol", f"not an HTTP/1.1 response: {bytes(head[:20])!r}")
            return
        try:
            status = int(head[9:12])
        except ValueError:
            self.fail("protocol", f"bad status line: {bytes(head[:40])!r}")
            return
        rest = len(data) - end - 4
        if status < 200:              # interim response (100 Continue): skip it
            if rest:
                self.on_plaintext(data[end + 4:])
            return
        self.status = status
        lower = head.lower()
        self.close_after = b"\nconnection: close" in lower
        i = lower.find(b"\ncontent-length:")
        if i >= 0:
            j = lower.find(b"\r", i)
            length = int(lower[i + 16:j] if j > 0 else lower[i + 16:])
        elif b"\ntransfer-encoding:" in lower and b"chunked" in lower:
            self.chunked = _Chunked()
            if rest:
                self.on_chunked(data[end + 4:])
            return
        elif status in (204, 304):
            length = 0
        else:
            self.fail("protocol", "response with neither Content-Length nor chunked")
            return
        if rest >= length:
            if rest > length:
                self.fail("protocol", "bytes after the response (no pipelining here)")
                return
            self.response_done()
        else:
            self.body_left = length - rest

    def on_chunked(self, data: bytes) -> None:
        try:
            finished = self.chunked.feed(data)
        except ValueError as exc:
            self.fail("protocol", str(exc))
            return
        if finished:
            self.chunked = None
            self.response_done()

    def response_done(self) -> None:
        w = self.w
        t0 = self.t0
        now = _now()
        self.t0 = 0.0
        w.record(self.status, now - t0)
        if self.oneshot:
            # Like curl after "Connection: close": send close_notify and let the server close
            # first (closing at once, with its close_notify possibly unread, could answer it
            # with a reset). The latency is already recorded.
            if w.resume:
                w.session_for_next[self.slot] = self.tls.session
            self.failed = True        # over: its loss is no error
            self.closing = True
            self.t0 = now
            self.tls.close()
        elif self.close_after:
            self.failed = True
            self.transport.close()
        elif w.idle:                  # one GET done: now held open, silent
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(self.status == w.expect)
        elif not w.stopping:
            self.t0 = now
            self.tls.send(self.request)

    slot = 0


class _Chunked:
    """Counts its way through a chunked body; True from feed() once the last chunk ends."""

    __slots__ = ("buf", "left", "trailers")

    def __init__(self) -> None:
        self.buf = b""
        self.left = 0          # bytes of chunk data (+ its CRLF) still to skip
        self.trailers = False

    def feed(self, data: bytes) -> bool:
        buf = self.buf + data if self.buf else data
        pos = 0
        while True:
            if self.left:
                take = min(self.left, len(buf) - pos)
                self.left -= take
                pos += take
                if self.left:
                    self.buf = b""
                    return False
            if self.trailers:
                end = buf.find(b"\r\n\r\n", pos - 2 if pos >= 2 else 0)
                if buf[pos:pos + 2] == b"\r\n":
                    return True
                if end < 0:
                    self.buf = buf[pos:]
                    return False
                return True
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if len(buf) - pos > 1024:
                    raise ValueError("chunk size line too long")
                self.buf = buf[pos:]
                return False
            size_text = buf[pos:eol].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ValueError(f"bad chunk size {bytes(size_text[:20])!r}") from None
            pos = eol + 2
            if size == 0:
                self.trailers = True
                if len(buf) - pos >= 2 and buf[pos:pos + 2] == b"\r\n":
                    return True
                continue
            self.left = size + 2


_H2_CONFIG = h2.config.H2Configuration(
    client_side=True, header_encoding=None, validate_outbound_headers=False,
    normalize_outbound_headers=False, validate_inbound_headers=False,
    normalize_inbound_headers=False)

_ResponseReceived = h2.events.ResponseReceived
_DataReceived = h2.events.DataReceived
_StreamEnded = h2.events.StreamEnded
_StreamReset = h2.events.StreamReset
_ConnectionTerminated = h2.events.ConnectionTerminated


class H2Conn(Conn):
    """HTTP/2 with ``streams`` GETs in flight."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.h2: h2.connection.H2Connection | None = None
        self.inflight: dict[int, list] = {}     # stream id -> [t0, status]
        self.next_id = 1
        self.consumed = 0

    def on_handshake(self) -> None:
        if self.tls.alpn != "h2":
            self.fail("protocol", f"server chose ALPN {self.tls.alpn!r}, not h2")
            return
        conn = h2.connection.H2Connection(config=_H2_CONFIG)
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _H2_WINDOW,
                              h2.settings.SettingCodes.ENABLE_PUSH: 0})
        conn.increment_flow_control_window(_H2_WINDOW - 65535)
        self.h2 = conn
        self.tls.send(conn.data_to_send())
        if self.w.running:
            self.kick()

    def kick(self) -> None:
        if self.failed or self.h2 is None or self.inflight or self.w.stopping:
            return
        now = _now()
        for _ in range(self.w.plan.streams):
            self._open(now)
        self._flush()

    def _open(self, now: float) -> None:
        stream_id = self.next_id
        self.next_id += 2
        try:
            self.h2.send_headers(stream_id, self.w.h2_headers, end_stream=True)
        except h2.exceptions.TooManyStreamsError:
            return                    # the server's MAX_CONCURRENT_STREAMS: fewer in flight
        self.inflight[stream_id] = [now, 0]
        self.t0 = 1.0                 # "requests in flight" for connection_lost

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.tls.send(data)

    def on_plaintext(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.fail("protocol", f"h2: {exc}")
            return
        w = self.w
        inflight = self.inflight
        for event in events:
            cls = event.__class__
            if cls is _DataReceived:
                self.consumed += event.flow_controlled_length
            elif cls is _ResponseReceived:
                entry = inflight.get(event.stream_id)
                if entry is not None:
                    for name, value in event.headers:
                        if name == b":status":
                            entry[1] = int(value)
                            break
            elif cls is _StreamEnded:
                entry = inflight.pop(event.stream_id, None)
                if entry is not None:
                    now = _now()
                    w.record(entry[1], now - entry[0])
                    if not w.stopping:
                        self._open(now)
            elif cls is _StreamReset:
                if inflight.pop(event.stream_id, None) is not None:
                    w.error("protocol", f"stream reset: {event.error_code!r}")
                    if not w.stopping:
                        self._open(_now())
            elif cls is _ConnectionTerminated:
                if inflight:
                    w.error("closed", f"GOAWAY {event.error_code!r} with streams in flight")
                self.inflight.clear()
                self.failed = True
                self.transport.close()
                return
        if self.consumed > 1 << 30:
            self.h2.increment_flow_control_window(self.consumed)
            self.consumed = 0
        if not inflight:
            self.t0 = 0.0
        if self.failed:
            return
        self._flush()

    def expire_requests(self, now: float, timeout: float) -> None:
        for t0, _status in self.inflight.values():
            if now - t0 > timeout:
                self.fail("timeout", f"no complete response in {timeout:g} s")
                return


# -- the worker --------------------------------------------------------------------------------

class Worker:
    def __init__(self, plan: WorkerPlan, loop: asyncio.AbstractEventLoop, emit) -> None:
        self.plan = plan
        self.loop = loop
        self.emit = emit
        self.tls_factory = make_factory(plan.tls)
        self.resume = plan.mode == "resume"
        self.idle = plan.mode == "idle"
        self.cpu = cpu_clock(plan.in_thread)
        method = b"POST" if plan.mode == "upload" else b"GET"
        head = [b"%s %s HTTP/1.1" % (method, plan.path.encode()),
                b"Host: " + plan.authority.encode(), b"User-Agent: tlsgate-bench"]
        if plan.mode in ("handshake", "resume"):
            head.append(b"Connection: close")
        body = b""
        if plan.mode == "upload":
            head += [b"Content-Type: application/octet-stream",
                     b"Content-Length: %d" % plan.size]
            body = bytes(range(256)) * (plan.size // 256) + bytes(range(plan.size % 256))
        self.request = b"\r\n".join(head) + b"\r\n\r\n" + body
        self.h2_headers = [(b":method", b"GET"), (b":scheme", b"https"),
                           (b":authority", plan.authority.encode()),
                           (b":path", plan.path.encode()), (b"user-agent", b"tlsgate-bench")]
        self.conns: set[Conn] = set()
        self.session_for_next: list = [None] * plan.connections
        self.running = False
        self.measuring = False
        self.stopping = False
        self.budget = plan.requests if plan.requests is not None else math.inf
        self.expect = plan.expect_status
        self.result = WorkerResult(plan.index)
        self.latencies = array("d")
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.statuses: dict[int, int] = {}
        self.finished: asyncio.Future | None = None
        self.warm_count = 0           # responses during warm-up (progress line only)
        self._tasks: set[asyncio.Task] = set()
        self._cpu0 = 0.0
        self._tick_index = 0

    # -- counting (hot path) ---------------------------------------------------------------

    def record(self, status: int, latency: float) -> None:
        if not self.measuring:
            self.warm_count += 1
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == self.expect:
            self.latencies.append(latency)
            if len(self.latencies) >= self.budget:
                self.finish()
        else:
            self.errors["http_status"] += 1

    def error(self, kind: str, detail: str) -> None:
        if not self.measuring:
            return
        self.errors[kind] += 1
        samples = self.result.error_samples
        if len(samples) < 5 and detail not in samples:
            samples.append(f"{kind}: {detail}")

    def on_handshake(self, conn: Conn) -> None:
        if not self.result.tls_info:
            self.result.tls_info = conn.tls.describe()
        if self.measuring:
            self.result.handshakes += 1
            if conn.tls.session_reused:
                self.result.resumed += 1

    def on_lost(self, conn: Conn) -> None:
        self.conns.discard(conn)
        if self.idle and conn.handshaken and not conn.errored and not self.stopping:
            self.error("closed", "the server closed an idle connection")
        # A working keep-alive connection is replaced; an attempt that failed before its
        # handshake is retried by the _reconnect loop that made it.
        if (conn.handshaken and self.running and not self.stopping
                and self.plan.mode in PERSISTENT_MODES):
            # A clean close (Connection: close, idle GOAWAY) reconnects at once.
            self._spawn(self._reconnect(_RECONNECT_DELAY if conn.errored else 0.0))

    # -- connecting --------------------------------------------------------------------------

    def _new_persistent(self) -> Conn:
        if self.plan.mode == "h2":
            return H2Conn(self)
        return H1Conn(self)

    async def _open_socket(self, conn: Conn) -> bool:
        self.conns.add(conn)
        # (A socket of our own through sock_connect + create_connection(sock=) was measured
        # too: 10% more generator CPU per one-shot connection than this.)
        await self.loop.create_connection(lambda: conn, self.plan.address, self.plan.port)
        return True

    async def _connect(self, conn: Conn) -> bool:
        """Open ``conn``'s TCP connection; False (error counted) when that fails."""
        try:
            return await self._open_socket(conn)
        except ConnectionRefusedError:
            self.conns.discard(conn)
            self.error("connect_refused", f"{self.plan.address}:{self.plan.port} refused")
            return False
        except asyncio.CancelledError:
            self.conns.discard(conn)
            if self.stopping:
                raise
            asyncio.current_task().uncancel()     # the sweeper's cancel: a connect timeout
            self.error("timeout", "connect timed out")
            return False
        except OSError as exc:
            self.conns.discard(conn)
            self.error("connect", f"{exc.__class__.__name__}: {exc}")
            return False

    async def _open_persistent(self) -> bool:
        conn = self._new_persistent()
        conn.ready = self.loop.create_future()
        conn.task = asyncio.current_task()
        if not await self._connect(conn):
            return False
        return await conn.ready

    async def _reconnect(self, delay: float = _RECONNECT_DELAY) -> None:
        if delay:
            await asyncio.sleep(delay)
        while self.running and not self.stopping:
            if await self._open_persistent():
                return
            await asyncio.sleep(_RECONNECT_DELAY)

    async def _open_idle(self, gate: asyncio.Semaphore) -> bool:
        async with gate:
            conn = H1Conn(self)
            conn.waiter = self.loop.create_future()
            conn.task = asyncio.current_task()
            if not await self._connect(conn):
                return False
            return bool(await conn.waiter)

    async def _prepare_idle(self) -> int:
        """Open the idle connections, counted as measured; the number held open."""
        self._begin_measure()
        sweeper = self.loop.create_task(self._sweep())     # connect/handshake/GET timeouts
        gate = asyncio.Semaphore(max(1, self.plan.concurrency))
        try:
            await asyncio.gather(*(self._open_idle(gate) for _ in range(self.plan.connections)))
        finally:
            sweeper.cancel()
        return sum(1 for c in self.conns if c.handshaken and not c.failed and not c.t0)

    async def _oneshot_slot(self, slot: int) -> None:
        loop = self.loop
        while not self.stopping:
            session = self.session_for_next[slot] if self.resume else None
            conn = H1Conn(self, session, oneshot=True)
            conn.slot = slot
            conn.waiter = loop.create_future()
            conn.t0 = _now()
            conn.task = asyncio.current_task()
            if not await self._connect(conn):
                await asyncio.sleep(_RECONNECT_DELAY)
                continue
            await conn.waiter
            if conn.errored:          # do not hammer a broken server
                await asyncio.sleep(_RECONNECT_DELAY)

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- phases ------------------------------------------------------------------------------

    async def prepare(self) -> int:
        """Open the keep-alive connections (not measured); the number that succeeded."""
        if self.idle:
            return await self._prepare_idle()
        if self.plan.mode not in PERSISTENT_MODES:
            return 0
        attempts = [self.loop.create_task(self._open_persistent())
                    for _ in range(self.plan.connections)]
        await asyncio.wait(attempts, timeout=self.plan.timeout)
        for task in attempts:
            task.cancel()
        for conn in list(self.conns):
            if not conn.handshaken and conn.transport is not None:
                conn.failed = True
                conn.transport.abort()
        return sum(1 for t in attempts if not t.cancelled() and t.done()
                   and t.exception() is None and t.result())

    async def run(self, t_start: float, t_measure: float, t_end: float | None) -> WorkerResult:
        loop = self.loop
        self.finished = loop.create_future()
        delay = t_start - _now()
        if delay > 0:
            await asyncio.sleep(delay)
        self.running = True
        if t_measure <= _now():
            self._begin_measure()
        else:
            loop.call_at(_loop_time(loop, t_measure), self._begin_measure)
        if t_end is not None:
            loop.call_at(_loop_time(loop, t_end), self.finish)
        if self.plan.mode in PERSISTENT_MODES:
            open_conns = [c for c in self.conns if c.handshaken and not c.failed]
            for conn in open_conns:
                conn.kick()
            for _ in range(self.plan.connections - len(open_conns)):
                self._spawn(self._reconnect(0.0))
        elif not self.idle:
            for slot in range(self.plan.connections):
                self._spawn(self._oneshot_slot(slot))
        sweeper = loop.create_task(self._sweep())
        ticker = loop.create_task(self._tick(t_measure))
        try:
            await self.finished
        finally:
            sweeper.cancel()
            ticker.cancel()
        await self._shutdown()
        return self._result()

    def _begin_measure(self) -> None:
        if self.stopping or self.measuring:
            return
        self.measuring = True
        self.result.measure_start = _now()
        self._cpu0 = self.cpu()

    def finish(self) -> None:
        if self.stopping:
            return
        if not self.measuring:
            self._begin_measure()
        self.result.cpu_seconds = self.cpu() - self._cpu0
        self.result.measure_end = _now()
        self.measuring = False
        self.stopping = True
        self.emit(("done", self.plan.index, self.result.measure_end))
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.failed = True
                conn.transport.abort()
        await asyncio.sleep(0)

    async def _sweep(self) -> None:
        timeout = self.plan.timeout
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            now = _now()
            for conn in list(self.conns):
                if conn.transport is None:       # still connecting
                    if conn.task is not None and now - conn.since > timeout:
                        task, conn.task = conn.task, None
                        task.cancel()
                else:
                    conn.expire(now, timeout)

    async def _tick(self, t_measure: float) -> None:
        """Once a second: cumulative figures for the progress line."""
        while True:
            await asyncio.sleep(1.0)
            lat = self.latencies
            recent = sorted(lat[self._tick_index:])
            self._tick_index = len(lat)
            p99 = recent[min(len(recent) - 1, int(len(recent) * 0.99))] if recent else None
            self.emit(("tick", self.plan.index, _now(),
                       self.warm_count + len(lat) + self.errors["http_status"],
                       sum(self.errors.values()), p99, self.measuring))

    def _result(self) -> WorkerResult:
        result = self.result
        result.completed = len(self.latencies)
        result.latencies = self.latencies.tobytes()
        result.errors = {k: v for k, v in self.errors.items() if v}
        result.statuses = dict(self.statuses)
        return result


def _loop_time(loop: asyncio.AbstractEventLoop, monotonic_deadline: float) -> float:
    """A time.monotonic() deadline on the loop's clock (the same clock for asyncio/uvloop,
    but not assumed)."""
    return loop.time() + (monotonic_deadline - _now())


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def worker_main(plan: WorkerPlan, emit, wait_go, started=None) -> None:
    """Run one worker: prepare, report ``ready``, wait for ``go``, run, report ``result``.

    ``emit(event)`` sends an event tuple to the coordinator; ``wait_go()`` blocks until the
    coordinator's ``("go", t_start, t_measure, t_end)`` (or None: abort) arrives.
    ``started(loop, worker)``, if given, is called once the worker exists (so a thread's owner
    can stop it with ``loop.call_soon_threadsafe(worker.finish)``).
    """
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        try:
            worker = Worker(plan, loop, emit)
            if started is not None:
                started(loop, worker)
            opened = loop.run_until_complete(worker.prepare())
        except Exception as exc:  # bad certificate files etc.: reported, not a hang
            emit(("failed", plan.index, f"{exc.__class__.__name__}: {exc}"))
            return
        emit(("ready", plan.index, opened))
        go = wait_go()
        if go is None:
            loop.run_until_complete(worker._shutdown())
            return
        _, t_start, t_measure, t_end = go
        result = loop.run_until_complete(worker.run(t_start, t_measure, t_end))
        emit(("result", plan.index, result))
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        asyncio.set_event_loop(None)
