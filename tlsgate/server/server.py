"""Listeners, signals and reloads around :class:`GatewayConnection`.

SIGHUP reloads config, certificates and policies: a config that fails to load is refused and
logged, and the running one stays. SIGTERM/SIGINT stop accepting, let requests in flight
finish (up to ``drain_timeout``), then close every connection with close_notify.

With ``workers > 1`` the parent process reloads: it loads the new configuration itself,
forks a new generation of workers, and only then tells the previous one to stop (drain and
exit), as nginx does. Every worker of a generation shares the TLS contexts built before the
fork, session ticket keys included, so a ticket resumes on whichever worker the kernel picks;
workers reloading on their own would each make their own keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from tlsgate.config.errors import ConfigError
from tlsgate.config.loader import config_warnings, load_config
from tlsgate.server.connection import GatewayConnection
from tlsgate.server.runtime import Runtime

log = logging.getLogger("tlsgate.server")

#: Signals the server handles. :func:`run` blocks them until the handlers are installed, so a
#: signal that arrives while the config loads or a worker starts is handled, not fatal.
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def parse_listen(address: str) -> tuple[str, int]:
    """"127.0.0.1:8443" / "[::1]:8443" / "localhost:8443" → (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class GatewayServer:
    def __init__(self, config_path: Path, *, drain_timeout: float = 10.0,
                 reuse_port: bool = False) -> None:
        self.config_path = config_path
        self.drain_timeout = drain_timeout
        self.reuse_port = reuse_port
        self.runtime: Runtime | None = None
        self.connections: set[GatewayConnection] = set()
        #: Listening sockets bound beforehand (the workers of :func:`run`); else ``start``
        #: binds the configured addresses itself.
        self.sockets: list[socket.socket] | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.bound: list[tuple[str, int]] = []

    def load(self) -> None:
        config = load_config(self.config_path)
        for warning in config_warnings(config):
            log.warning("%s", warning)
        self.runtime = Runtime.build(config)

    async def start(self) -> None:
        if self.runtime is None:
            self.load()
        loop = asyncio.get_running_loop()
        if self.sockets is not None:
            for sock in self.sockets:
                self._servers.append(
                    await loop.create_server(self._new_connection, sock=sock, backlog=1024))
        else:
            for address in self.runtime.config.gateway.listen:
                host, port = parse_listen(address)
                self._servers.append(await loop.create_server(
                    self._new_connection, host, port, reuse_address=True,
                    reuse_port=self.reuse_port or None, backlog=1024))
        for server in self._servers:
            for sock in server.sockets:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.bound.append(sock.getsockname()[:2])
        log.info("tlsgate listening on %s", ", ".join(f"{h}:{p}" for h, p in self.bound))

    def _new_connection(self) -> GatewayConnection:
        return GatewayConnection(self.runtime, self.connections)

    def reload(self) -> bool:
        """Load the config again; keep the running one if the new one is broken."""
        runtime = self.new_runtime()
        if runtime is None:
            return False
        old, new = self.runtime.config.gateway, runtime.config.gateway
        self.runtime = runtime
        if (new.listen, new.workers) != (old.listen, old.workers):
            log.warning("listen addresses and workers take effect on restart only")
        log.info("configuration reloaded from %s", self.config_path)
        return True

    def new_runtime(self) -> Runtime | None:
        """The configuration loaded again, or None (the reason logged) if it is broken."""
        try:
            config = load_config(self.config_path)
            runtime = Runtime.build(config)
            warnings = config_warnings(config)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
            return None
        except Exception as exc:  # a certificate OpenSSL rejects, for instance
            log.error("reload refused, keeping the running config: %s", exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            return None
        for warning in warnings:
            log.warning("%s", warning)
        return runtime

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        # Signals that arrived while starting (blocked by ``run``) are delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def _on_stop_signal(self) -> None:
        if self._stop_task is None:  # Ctrl-C reaches the workers and their parent's copy
            self._stop_task = asyncio.ensure_future(self.stop())

    async def stop(self) -> None:
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        log.info("stopping: draining %d connection(s)", len(self.connections))
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        while loop.time() < deadline:
            for conn in list(self.connections):
                if not conn.busy:
                    conn.close()
            if not self.connections:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        if self.runtime is not None:
            await self.runtime.gateway.aclose()
        self._stopped.set()

    async def serve_forever(self) -> None:
        await self.start()
        self.install_signal_handlers()
        await self._stopped.wait()


def run(config_path: Path) -> int:
    """Run the gateway in the foreground until SIGTERM/SIGINT; return the exit status.

    With ``workers > 1`` the parent binds one SO_REUSEPORT socket per worker on each listen
    address (so a port in use fails before anything starts, and port 0 means one port for
    all), then forks the workers; the kernel spreads connections over their sockets. The
    parent reloads on SIGHUP (see the module docstring), forwards SIGTERM/SIGINT and waits;
    when a worker exits on its own the others are stopped too.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    server = GatewayServer(config_path)
    server.load()  # config errors surface before anything listens
    workers = server.runtime.config.gateway.workers
    if workers <= 1:
        _run_loop(server)
        return 0
    return _run_workers(server, bind_listeners(server.runtime.config.gateway.listen, workers))


def bind_listeners(addresses, copies: int) -> list[list[socket.socket]]:
    """For each of ``copies`` workers, its listening sockets: one per address (and per
    resolved address of a host name), all copies bound to the same port with SO_REUSEPORT."""
    per_worker: list[list[socket.socket]] = [[] for _ in range(copies)]
    try:
        for address in addresses:
            host, port = parse_listen(address)
            infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC,
                                       socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
                for sockets in per_worker:
                    sock = socket.socket(family, kind, proto)
                    sockets.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    try:
                        sock.bind(sockaddr)
                    except OSError as exc:
                        raise OSError(exc.errno, f"cannot listen on {address}: "
                                                 f"{exc.strerror or exc}") from None
                    sock.listen(1024)
                    sock.setblocking(False)
                    # Port 0: the kernel picks one for the first copy; the others share it.
                    sockaddr = (sockaddr[0], sock.getsockname()[1], *sockaddr[2:])
    except BaseException:
        for sockets in per_worker:
            for sock in sockets:
                sock.close()
        raise
    return per_worker


#: What the parent of the workers waits for, all blocked and taken with sigtimedwait: no
#: handler runs in the middle of a fork or a reload.
_PARENT_SIGNALS = (*HANDLED_SIGNALS, signal.SIGCHLD)


def _run_workers(server: GatewayServer, per_worker: list[list[socket.socket]]) -> int:
    """Fork one worker per socket list; reload, forward signals; return when all are gone."""
    return _Supervisor(server).run(per_worker)


class _Supervisor:
    """The parent of the workers, one generation per loaded configuration."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.children: dict[int, tuple[int, int]] = {}   # pid -> (generation, worker number)
        self.generation = 0
        self.stopping = False
        self.status = 0

    def run(self, per_worker: list[list[socket.socket]]) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
        self._start_generation(per_worker)
        while self.children:
            info = signal.sigtimedwait(_PARENT_SIGNALS, 0.5)
            self._reap()
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if info.si_signo == signal.SIGHUP:
                if not self.stopping:
                    self._reload()
            else:
                self.stopping = True
                self._signal_all(info.si_signo)
        return self.status

    def _start_generation(self, per_worker: list[list[socket.socket]]) -> None:
        self.generation += 1
        started = []
        for number in range(len(per_worker)):
            pid = os.fork()
            if pid == 0:
                _worker(self.server, number, per_worker)  # never returns
            self.children[pid] = (self.generation, number)
            started.append(pid)
        for sockets in per_worker:  # the workers hold them now
            for sock in sockets:
                sock.close()
        log.info("tlsgate started %d workers: %s", len(started),
                 ", ".join(str(pid) for pid in started))

    def _reload(self) -> None:
        runtime = self.server.new_runtime()
        if runtime is None:
            return
        gateway = runtime.config.gateway
        try:
            per_worker = bind_listeners(gateway.listen, max(gateway.workers, 1))
        except OSError as exc:
            log.error("reload refused, keeping the running workers: %s", exc)
            return
        self.server.runtime = runtime
        log.info("configuration reloaded from %s; the previous workers finish their "
                 "requests and stop", self.server.config_path)
        previous = list(self.children)
        self._start_generation(per_worker)
        for pid in previous:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue
            generation, number = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if generation < self.generation:
                continue                    # retired by a reload
            if code != 0:
                self.status = 1
            if not self.stopping:
                log.error("worker %d (pid %d) exited with status %d; stopping the others",
                          number, pid, code)
                self.status = 1
                self.stopping = True
                self._signal_all(signal.SIGTERM)


def _worker(server: GatewayServer, number: int, per_worker: list[list[socket.socket]]) -> None:
    """A forked worker: serve on its own sockets only, then leave without running the
    parent's cleanup (``os._exit``)."""
    code = 0
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})   # the parent's own
        for other, sockets in enumerate(per_worker):
            if other != number:  # else a dead worker's socket would keep getting connections
                for sock in sockets:
                    sock.close()
        server.sockets = per_worker[number]
        server.reuse_port = True
        _run_loop(server)
    except OSError as exc:
        print(f"tlsgate: worker {number}: {exc}", file=sys.stderr)
        code = 1
    except BaseException:
        log.exception("worker %d failed", number)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run_loop(server: GatewayServer) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.serve_forever())
    else:
        uvloop.run(server.serve_forever())
