"""Test support: run a real tlsgate server on a loopback port in a background thread.

The gateway gets its own event loop (uvloop when installed, as in production) in a thread,
so tests can drive it with blocking real clients: curl, openssl s_client, http.client.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tlsgate.server.server import GatewayServer


@dataclass
class RunningGateway:
    server: GatewayServer
    loop: asyncio.AbstractEventLoop
    port: int
    config_path: Path

    def url(self, path: str = "/", host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"

    def call(self, coro_fn, *args, timeout: float = 10.0):
        """Run a coroutine function on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self.loop).result(timeout)

    def reload(self) -> bool:
        async def _reload():
            return self.server.reload()
        return self.call(_reload)


def write_config(directory: Path, body: str, *, pki: Path) -> Path:
    """Write a gateway.toml whose ``{pki}`` placeholders point at the test PKI."""
    path = directory / "gateway.toml"
    path.write_text(textwrap.dedent(body).replace("{pki}", str(pki)))
    return path


@contextlib.contextmanager
def run_gateway(config_path: Path) -> Iterator[RunningGateway]:
    """Start a gateway from ``config_path`` (which should listen on 127.0.0.1:0)."""
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    server = GatewayServer(config_path, drain_timeout=2.0)
    server.load()
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="tlsgate-test", daemon=True)
    thread.start()
    ready.wait(10)
    if failure:
        raise failure[0]
    running = RunningGateway(server, loop, server.bound[0][1], config_path)
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
