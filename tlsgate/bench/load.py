"""``tlsgate bench``: a load generator that presents client certificates (SPEC §7).

    run_load("https://localhost:8443/echo", "h1", pki=Path(".tlsgate/pki"), duration=10,
             connections=10, workers=1, server_pid=1234) -> LoadResult

Modes (:data:`MODES`):

- ``handshake``: a new TLS connection per request (GET, read the response, close_notify,
  close), no resumption: full handshakes per second;
- ``resume``: the same, offering the previous connection's session (resumption rate reported);
- ``h1``: keep-alive HTTP/1.1 over ``connections`` connections, one request at a time each;
- ``h2``: HTTP/2 over ``connections`` connections x ``streams`` concurrent streams;
- ``upload``: POST of ``size`` bytes per request over keep-alive HTTP/1.1 (MB/s reported);
- ``idle``: ``connections`` connections opened (:data:`IDLE_CONCURRENCY` at a time), one GET
  each, then held open and idle; with ``server_pid``, the server's RSS (VmRSS, with its
  descendants) before and after (:data:`IDLE_SETTLE` s after the last one opened) gives KiB per
  idle connection.

Every client is closed-loop (the next request leaves when the response is complete). The
connections are spread over ``workers`` processes, each with its own event loop (uvloop); with
one worker the generator runs in a thread of the calling process, so a test can point it at a
gateway running in that same process. The coordinator (the calling thread) starts the workers,
releases them together, samples the server's CPU time from ``/proc`` at the edges of the
measured window, prints a progress line every second and merges the results.

Only loopback is ever loaded: the target's host must be (or resolve to) 127.0.0.1 or ::1, or
``connect`` must name one of them; anything else is refused before a packet is sent.
"""

from __future__ import annotations

import ipaddress
import math
import multiprocessing
import os
import platform
import queue
import resource
import signal
import socket
import ssl
import sys
import threading
import time
from array import array
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from tlsgate.bench.load_cli import add_arguments, main
from tlsgate.bench.load_clients import WorkerPlan, WorkerResult, worker_main
from tlsgate.bench.load_common import (
    DEFAULT_CONNECTIONS,
    DEFAULT_GROUPS,
    DEFAULT_SIZE,
    DEFAULT_STREAMS,
    ERROR_KINDS,
    HANDSHAKE_MODES,
    IDLE_CONCURRENCY,
    IDLE_SETTLE,
    MODES,
)
from tlsgate.bench.load_tls import ClientTLSSettings, resolve_tls_lib

__all__ = ["ERROR_KINDS", "MODES", "LoadResult", "Target", "add_arguments", "main",
           "parse_target", "process_tree_cpu", "process_tree_rss_kib", "run_load"]

LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
_READY_TIMEOUT = 60.0


# -- target ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    url: str
    address: str            # 127.0.0.1 or ::1
    port: int
    server_hostname: str | None   # SNI / certificate name; None for an IP literal
    authority: str          # Host header
    path: str               # path + query


def parse_target(url: str, connect: str | None = None) -> Target:
    """Split an https:// URL and find the loopback address to connect to (ValueError if none)."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ValueError(f"target must be an https:// URL, not {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"target {url!r} has no host")
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise ValueError(f"target {url!r}: {exc}") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    literal = _ip_or_none(host)
    if connect is not None:
        address = _loopback(connect, f"--connect {connect}")
    elif literal is not None:
        address = _loopback(host, f"target host {host}")
    else:
        address = _resolve_loopback(host)
    authority = parts.netloc.rpartition("@")[2]
    return Target(url, address, port, None if literal is not None else host, authority, path)


def _ip_or_none(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _loopback(text: str, what: str) -> str:
    ip = _ip_or_none(text.strip("[]"))
    if ip is None or ip not in LOOPBACK:
        raise ValueError(f"{what}: the bench only loads 127.0.0.1 or ::1")
    return str(ip)


def _resolve_loopback(host: str) -> str:
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):    # RFC 6761: always loopback
        return "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host}: {exc}; use --connect 127.0.0.1") from None
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    for candidate in LOOPBACK:
        if candidate in addresses:
            return str(candidate)
    raise ValueError(f"{host} resolves to {', '.join(sorted(map(str, addresses)))}: the bench "
                     "only loads 127.0.0.1 or ::1 (use --connect 127.0.0.1 to keep the name "
                     "for SNI and Host)")


# -- results -----------------------------------------------------------------------------------

@dataclass
class LoadResult:
    """One run of one mode. Times in seconds unless the name says ms or µs."""

    target: str
    mode: str
    workers: int
    connections: int
    streams: int
    size: int                         # upload body bytes (upload mode)
    duration: float                   # the measured window, seconds
    warmup: float
    requests: int                     # completed with the expected status, in the window
    requests_per_second: float
    megabytes_per_second: float | None   # upload: request body MB (10^6 bytes) per second
    latency_ms: dict[str, float | None]  # p50 p90 p99 p99.9 max mean (None: no requests)
    errors: dict[str, int]            # by kind, every kind listed
    error_total: int
    error_samples: list[str]
    statuses: dict[str, int]          # response status -> count, in the window
    handshakes: int                   # TLS handshakes completed in the window
    resumed: int                      # of which resumed
    resumption_rate: float | None     # resumed / handshakes (handshake and resume modes)
    generator_cpu_seconds: float      # summed over workers, measured window only
    generator_cpu_percent: float      # of one core (can pass 100 with several workers)
    generator_cpu_us_per_request: float | None
    generator_saturated: bool         # a worker was busy > 90% of the window
    server_pid: int | None
    server_cpu_seconds: float | None  # utime+stime of the process tree, measured window
    server_cpu_percent: float | None
    server_cpu_us_per_request: float | None
    server_cpu_note: str | None
    tls_lib: str
    tls: dict[str, str | None]        # version, cipher, alpn of the first connection
    expect_status: int
    started_at: str
    environment: dict[str, str] = field(default_factory=dict)
    # idle mode: connections held open (the GET answered) and the server's RSS around them
    idle_connections: int | None = None
    server_rss_kib_before: int | None = None
    server_rss_kib_after: int | None = None
    server_kib_per_connection: float | None = None    # (after - before) / idle_connections
    server_rss_note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.error_total == 0


def _percentiles(latencies: array) -> dict[str, float | None]:
    keys = ("p50", "p90", "p99", "p99.9", "max", "mean")
    if not latencies:
        return dict.fromkeys(keys)
    ordered = sorted(latencies)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000.0

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p99.9": at(0.999),
            "max": ordered[-1] * 1000.0, "mean": sum(ordered) / n * 1000.0}


# -- server CPU from /proc ---------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return data[data.rindex(")") + 2:].split()


def process_tree_cpu(pid: int) -> float | None:
    """utime+stime (seconds) of ``pid`` and its live descendants (a multi-process server's
    workers), plus the children it has already reaped (cutime+cstime). None: no such pid."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for child in _descendants(pid):
        child_fields = _stat_fields(child)
        if child_fields is not None:
            total += int(child_fields[11]) + int(child_fields[12])
    return total / _CLOCK_TICKS


def process_tree_rss_kib(pid: int) -> int | None:
    """VmRSS (KiB) of ``pid`` plus its live descendants'. None: no such pid."""
    total = None
    for each in [pid, *_descendants(pid)]:
        try:
            with open(f"/proc/{each}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total = (total or 0) + int(line.split()[1])
                        break
        except OSError:
            if each == pid:
                return None
    return total


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# -- coordinator -------------------------------------------------------------------------------

def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(target: str, mode: str, *, pki: Path | None = None, duration: float = 10.0,
             requests: int | None = None, warmup: float = 1.0,
             connections: int = DEFAULT_CONNECTIONS, streams: int = DEFAULT_STREAMS,
             size: int = DEFAULT_SIZE, workers: int = 1, server_pid: int | None = None,
             timeout: float = 10.0, expect_status: int = 200, tls_lib: str = "auto",
             tls_version: str | None = None, verify: bool = True, connect: str | None = None,
             cert: Path | None = None, key: Path | None = None, cacert: Path | None = None,
             groups: str | None = DEFAULT_GROUPS, progress: bool = False) -> LoadResult:
    """Drive ``mode`` against ``target`` and return the figures of the measured window.

    ``duration`` seconds are measured after ``warmup`` seconds, unless ``requests`` is given
    (then the run ends after that many successful requests). The client certificate is
    ``pki/client.pem`` + ``client.key`` and the server is checked against ``pki/root.pem``,
    unless ``cert``/``key``/``cacert`` say otherwise. ``server_pid``: a process on this
    machine whose CPU time (with its descendants) is charged per request. ``groups``: the key
    exchange groups the pyOpenSSL client offers (None: its OpenSSL's default, which puts the
    costlier hybrid X25519MLKEM768 first).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    if workers < 1 or connections < 1 or streams < 1:
        raise ValueError("workers, connections and streams must be at least 1")
    if connections < workers:
        raise ValueError(f"{connections} connections cannot be spread over {workers} workers")
    if requests is not None and requests < workers:
        raise ValueError("--requests must be at least the number of workers")
    if requests is None and duration <= 0:
        raise ValueError("duration must be positive")
    if tls_version not in (None, "1.2", "1.3"):
        raise ValueError(f"tls_version must be 1.2 or 1.3, not {tls_version!r}")
    where = parse_target(target, connect)
    idle = mode == "idle"
    if idle:
        requests, duration, warmup = None, 0.0, 0.0
        fds = raise_fd_limit() - 64           # the loop, pipes, files
        if math.ceil(connections / workers) > fds:
            workers = math.ceil(connections / fds)  # one process cannot hold them all
            if workers > (os.cpu_count() or 1) * 8:
                raise ValueError(f"{connections} connections need more file descriptors "
                                 f"than RLIMIT_NOFILE allows ({fds + 64} per process)")
    lib = resolve_tls_lib(tls_lib, mode)
    if pki is not None:
        pki = Path(pki)
        if cert is None:
            cert, key = pki / "client.pem", key or pki / "client.key"
        cacert = cacert or pki / "root.pem"
    for path in (cert, key, cacert):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path}: no such file")
    tls = ClientTLSSettings(cert=cert, key=key, cacert=cacert, verify=verify,
                            alpn=("h2",) if mode == "h2" else ("http/1.1",),
                            tls_version=tls_version, lib=lib, groups=groups)
    in_thread = workers == 1
    budgets = _split(requests, workers) if requests is not None else [None] * workers
    plans = [WorkerPlan(index=i, mode=mode, address=where.address, port=where.port,
                        server_hostname=where.server_hostname, authority=where.authority,
                        path=where.path, connections=n, streams=streams, size=size,
                        expect_status=expect_status, timeout=timeout, requests=budgets[i],
                        tls=tls, in_thread=in_thread,
                        concurrency=max(1, IDLE_CONCURRENCY // workers))
             for i, n in enumerate(_split(connections, workers))]
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    coordinator = _Coordinator(mode, len(plans), server_pid, duration if requests is None
                               else None, warmup, progress,
                               size if mode == "upload" else None)
    coordinator.connections_hint = connections
    cpu0 = None
    if idle and server_pid is not None:       # CPU charged per connection opened (+ GET)
        coordinator.rss0 = process_tree_rss_kib(server_pid)
        cpu0 = process_tree_cpu(server_pid)
    pool = _ThreadWorker(plans[0]) if in_thread else _ProcessWorkers(plans)
    try:
        results = coordinator.run(pool)
    except BaseException:            # Ctrl-C or a failure: stop the load now
        pool.abort()
        raise
    finally:
        pool.close()
    if idle and cpu0 is not None:
        coordinator.server_cpu0 = cpu0
    return _merge(where, mode, plans, results, coordinator, lib, expect_status, started_at,
                  warmup, size, in_thread)


class _ThreadWorker:
    """One worker in a thread of this process (workers=1)."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.events: queue.Queue = queue.Queue()
        self._go: queue.Queue = queue.Queue()
        self._running: tuple | None = None
        self.thread = threading.Thread(target=worker_main, name="tlsgate-bench",
                                       args=(plan, self.events.put, self._go.get,
                                             self._started), daemon=True)
        self.thread.start()

    def _started(self, loop, worker) -> None:
        self._running = (loop, worker)

    def abort(self) -> None:
        if self._running is not None:
            loop, worker = self._running
            try:
                loop.call_soon_threadsafe(worker.finish)
            except RuntimeError:      # loop already closed
                pass

    def go(self, message) -> None:
        self._go.put(message)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def close(self) -> None:
        if self.thread.is_alive():
            self._go.put(None)
        self.thread.join(30)


def _process_entry(plan: WorkerPlan, events, go_conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the coordinator's to handle

    def wait_go():
        try:
            return go_conn.recv()
        except EOFError:
            return None
    worker_main(plan, events.put, wait_go)


class _ProcessWorkers:
    """``workers`` processes (fork: the CLI's ``python -m tlsgate`` cannot be re-imported by
    spawn), reporting through one queue."""

    def __init__(self, plans: list[WorkerPlan]) -> None:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        self.events = ctx.Queue()
        self.pipes = []
        self.processes = []
        for plan in plans:
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_process_entry, args=(plan, self.events, receiver),
                                  name=f"tlsgate-bench-{plan.index}", daemon=True)
            process.start()
            receiver.close()
            self.pipes.append(sender)
            self.processes.append(process)

    def go(self, message) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def alive(self) -> bool:
        return all(p.is_alive() or p.exitcode == 0 for p in self.processes)

    def abort(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
            pipe.close()
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
        self.events.close()
        self.events.join_thread()


class _Coordinator:
    def __init__(self, mode: str, workers: int, server_pid: int | None,
                 duration: float | None, warmup: float, progress: bool,
                 upload_size: int | None) -> None:
        self.mode = mode
        self.upload_size = upload_size
        self.workers = workers
        self.server_pid = server_pid
        self.duration = duration
        self.warmup = warmup
        self.progress = progress
        self.connections_hint = 0
        self.server_cpu0: float | None = None
        self.server_cpu1: float | None = None
        self.window: tuple[float, float] | None = None
        self.coordinator_cpu = 0.0
        self.rss0: int | None = None          # idle: server RSS (KiB) before / after
        self.rss1: int | None = None
        self.held = 0                         # idle: connections the workers hold open
        self._ticks: dict[int, tuple] = {}
        self._fresh: set[int] = set()
        self._t_start = 0.0
        self._last_print: tuple[float, int] | None = None
        self._line_open = False

    def run(self, pool) -> list[WorkerResult]:
        ready = 0
        failures = []
        deadline = time.monotonic() + _READY_TIMEOUT
        if self.mode == "idle":
            deadline += self.connections_hint / 100      # opening 10,000 takes a while
        while ready + len(failures) < self.workers:
            event = self._get(pool, deadline)
            if event[0] == "ready":
                ready += 1
                self.held += event[2]
            elif event[0] == "failed":
                failures.append(event[2])
        if failures:
            raise RuntimeError(f"bench worker failed: {failures[0]}")
        if self.mode == "idle":
            if self.progress:
                sys.stderr.write(f"[idle] {self.held:,} connections open; settling "
                                 f"{IDLE_SETTLE:g} s\n")
                sys.stderr.flush()
            time.sleep(IDLE_SETTLE)
            if self.server_pid is not None:
                self.rss1 = process_tree_rss_kib(self.server_pid)
        t_start = time.monotonic() + 0.02
        t_measure = t_start + max(0.0, self.warmup)
        t_end = t_measure + self.duration if self.duration is not None else None
        cpu0 = time.thread_time()
        pool.go(("go", t_start, t_measure, t_end))
        results: dict[int, WorkerResult] = {}
        done: set[int] = set()
        self._last_print = (t_start, 0)
        self._t_start = t_start
        hard_deadline = (t_end + 60.0) if t_end is not None else math.inf
        sampled_start = sampled_end = False
        while len(results) < self.workers:
            now = time.monotonic()
            if not sampled_start and now >= t_measure:
                self.server_cpu0 = self._server_cpu()
                sampled_start = True
            if t_end is not None and not sampled_end and now >= t_end:
                self.server_cpu1 = self._server_cpu()
                sampled_end = True
            upcoming = [now + 0.5]
            if not sampled_start:
                upcoming.append(t_measure)
            elif t_end is not None and not sampled_end:
                upcoming.append(t_end)
            wait = max(0.0, min(upcoming) - now)
            event = self._get(pool, min(hard_deadline, now + min(wait, 0.5)), soft=True)
            if event is None:
                if time.monotonic() >= hard_deadline:
                    raise RuntimeError("bench workers did not finish")
                continue
            kind = event[0]
            if kind == "tick":
                self._ticks[event[1]] = event[2:]
                self._fresh.add(event[1])
                if self.progress and len(self._fresh) == self.workers:
                    self._print_progress()
                    self._fresh.clear()
            elif kind == "done":
                done.add(event[1])
                if len(done) == self.workers and not sampled_end:
                    if not sampled_start:
                        self.server_cpu0 = self._server_cpu()
                        sampled_start = True
                    self.server_cpu1 = self._server_cpu()
                    sampled_end = True
            elif kind == "result":
                results[event[1]] = event[2]
            elif kind == "failed":
                raise RuntimeError(f"bench worker failed: {event[2]}")
        self.coordinator_cpu = time.thread_time() - cpu0
        if self.progress and self._line_open:
            sys.stderr.write("\n")
            sys.stderr.flush()
        return [results[i] for i in sorted(results)]

    def _get(self, pool, deadline: float, soft: bool = False):
        """The next event; None (soft) or RuntimeError once ``deadline`` passes without one."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    return pool.events.get_nowait()
                return pool.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if remaining <= 0:
                    if soft:
                        return None
                    raise RuntimeError("bench workers did not get ready "
                                       "(connect or TLS setup hung)") from None
                if not pool.alive():
                    raise RuntimeError("a bench worker died") from None
                if soft:
                    return None

    def _server_cpu(self) -> float | None:
        if self.server_pid is None:
            return None
        return process_tree_cpu(self.server_pid)

    def _print_progress(self) -> None:
        ticks = list(self._ticks.values())
        completed = sum(t[1] for t in ticks)
        errors = sum(t[2] for t in ticks)
        p99s = [t[3] for t in ticks if t[3] is not None]
        now = max(t[0] for t in ticks)
        elapsed = now - self._t_start
        rate = 0.0
        if self._last_print is not None and now > self._last_print[0]:
            rate = (completed - self._last_print[1]) / (now - self._last_print[0])
        self._last_print = (now, completed)
        measuring = any(t[4] for t in ticks)
        phase = "" if measuring else " warm-up"
        p99 = f"{max(p99s) * 1000:.1f} ms" if p99s else "-"
        mbps = (f" {rate * self.upload_size / 1e6:,.1f} MB/s"
                if self.upload_size is not None else "")
        line = (f"[{self.mode}]{phase} {elapsed:.1f}s {rate:,.0f} req/s{mbps} p99 {p99} "
                f"errors {errors:,}")
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line.ljust(70))
            self._line_open = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _merge(where: Target, mode: str, plans: list[WorkerPlan], results: list[WorkerResult],
           coordinator: _Coordinator, lib: str, expect_status: int, started_at: str,
           warmup: float, size: int, in_thread: bool) -> LoadResult:
    latencies = array("d")
    errors = dict.fromkeys(ERROR_KINDS, 0)
    statuses: dict[str, int] = {}
    samples: list[str] = []
    handshakes = resumed = 0
    generator_cpu = 0.0
    for result in results:
        chunk = array("d")
        chunk.frombytes(result.latencies)
        latencies.extend(chunk)
        for kind, count in result.errors.items():
            errors[kind] += count
        for status, count in result.statuses.items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
        samples.extend(s for s in result.error_samples if s not in samples)
        handshakes += result.handshakes
        resumed += result.resumed
        generator_cpu += result.cpu_seconds
    start = min(r.measure_start for r in results)
    end = max(r.measure_end for r in results)
    window = max(end - start, 1e-9)
    count = len(latencies)
    server_cpu = note = None
    c0, c1 = coordinator.server_cpu0, coordinator.server_cpu1
    if coordinator.server_pid is not None:
        if c0 is None or c1 is None:
            note = f"no /proc/{coordinator.server_pid}/stat: process gone?"
        else:
            server_cpu = c1 - c0
            if coordinator.server_pid == os.getpid():
                # The server shares this process: take the generator's thread out.
                server_cpu = max(0.0, server_cpu - generator_cpu - coordinator.coordinator_cpu)
                note = ("server in the generator's process: generator and coordinator thread "
                        "CPU subtracted")
    busiest = max((r.cpu_seconds / max(r.measure_end - r.measure_start, 1e-9)
                   for r in results), default=0.0)
    total_responses = count + errors["http_status"]
    idle = {}
    if mode == "idle":
        idle["idle_connections"] = coordinator.held
        rss0, rss1 = coordinator.rss0, coordinator.rss1
        if coordinator.server_pid is not None:
            idle.update(server_rss_kib_before=rss0, server_rss_kib_after=rss1)
            if rss0 is None or rss1 is None:
                idle["server_rss_note"] = (f"no /proc/{coordinator.server_pid}/status: "
                                           "process gone?")
            elif coordinator.held:
                idle["server_kib_per_connection"] = (rss1 - rss0) / coordinator.held
            if coordinator.server_pid == os.getpid():
                idle["server_rss_note"] = ("server in the generator's process: both ends of "
                                           "every connection counted")
    return LoadResult(
        target=where.url, mode=mode, workers=len(plans),
        connections=sum(p.connections for p in plans), streams=plans[0].streams if mode == "h2"
        else 1, size=size if mode == "upload" else 0, duration=window, warmup=warmup,
        requests=count, requests_per_second=count / window,
        megabytes_per_second=(count * size / 1e6 / window) if mode == "upload" else None,
        latency_ms=_percentiles(latencies), errors=errors, error_total=sum(errors.values()),
        error_samples=samples[:10], statuses=statuses, handshakes=handshakes, resumed=resumed,
        resumption_rate=(resumed / handshakes if handshakes else None)
        if mode in HANDSHAKE_MODES else None,
        generator_cpu_seconds=generator_cpu, generator_cpu_percent=generator_cpu / window * 100,
        generator_cpu_us_per_request=generator_cpu / count * 1e6 if count else None,
        generator_saturated=busiest > 0.9,
        server_pid=coordinator.server_pid, server_cpu_seconds=server_cpu,
        server_cpu_percent=server_cpu / window * 100 if server_cpu is not None else None,
        server_cpu_us_per_request=(server_cpu / total_responses * 1e6
                                   if server_cpu is not None and total_responses else None),
        server_cpu_note=note, tls_lib=lib, tls=next((r.tls_info for r in results if r.tls_info),
                                                    {}),
        expect_status=expect_status, started_at=started_at, environment=_environment(),
        **idle)


def _environment() -> dict[str, str]:
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "cpus": str(os.cpu_count()), "ssl": ssl.OPENSSL_VERSION}
    try:
        from OpenSSL import SSL
        env["pyopenssl_openssl"] = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except Exception:  # noqa: BLE001 - informational only
        pass
    try:
        import uvloop
        env["uvloop"] = uvloop.__version__
    except ImportError:
        env["uvloop"] = "not installed (asyncio loop)"
    return env
