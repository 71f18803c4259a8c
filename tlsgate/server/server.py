"""Listeners, signals and reloads around :class:`GatewayConnection`.

SIGHUP reloads config, certificates and policies: a config that fails to load is refused and
logged, and the running one stays. SIGTERM/SIGINT stop accepting, let requests in flight
finish (up to ``drain_timeout``), then close every connection with close_notify.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

from tlsgate.config.errors import ConfigError
from tlsgate.config.loader import config_warnings, load_config
from tlsgate.server.connection import GatewayConnection
from tlsgate.server.runtime import Runtime

log = logging.getLogger("tlsgate.server")


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
        self._servers: list[asyncio.base_events.Server] = []
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
        for address in self.runtime.config.gateway.listen:
            host, port = parse_listen(address)
            server = await loop.create_server(
                self._new_connection, host, port, reuse_address=True,
                reuse_port=self.reuse_port or None, backlog=1024)
            self._servers.append(server)
            for sock in server.sockets:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.bound.append(sock.getsockname()[:2])
        log.info("tlsgate listening on %s", ", ".join(f"{h}:{p}" for h, p in self.bound))

    def _new_connection(self) -> GatewayConnection:
        return GatewayConnection(self.runtime, self.connections)

    def reload(self) -> bool:
        """Load the config again; keep the running one if the new one is broken."""
        try:
            config = load_config(self.config_path)
            runtime = Runtime.build(config)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
            return False
        except Exception as exc:  # a certificate OpenSSL rejects, for instance
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        for warning in config_warnings(config):
            log.warning("%s", warning)
        old_listen = self.runtime.config.gateway.listen
        self.runtime = runtime
        if config.gateway.listen != old_listen:
            log.warning("listen addresses changed; they take effect on restart")
        log.info("configuration reloaded from %s", self.config_path)
        return True

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
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


def run(config_path: Path) -> None:
    """Run the gateway in the foreground until SIGTERM/SIGINT.

    With ``workers > 1`` the process forks that many workers that share each listening
    port through SO_REUSEPORT (the kernel spreads connections); the parent only forwards
    signals and waits. Workers share the TLS session ticket keys made before the fork, so a
    session resumes on whichever worker the kernel picks.
    """
    server = GatewayServer(config_path)
    server.load()  # config errors surface before anything listens
    workers = server.runtime.config.gateway.workers
    if workers <= 1:
        _run_loop(server)
        return
    server.reuse_port = True
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                _run_loop(server)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum, _frame):
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue


def _run_loop(server: GatewayServer) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.serve_forever())
    else:
        uvloop.run(server.serve_forever())
