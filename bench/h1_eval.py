"""Micro-benchmark: tlsgate's keep-alive HTTP/1.1 path per request, in one process, without
sockets or TLS.

One GET at a time, as the bench's keep-alive clients send them, goes to tlsgate's HTTP/1.1
adapter (``tlsgate.http.h1.H1Connection``) wired to the real gateway (router, the seed's
thumbprint policy with ``Verify()``, the echo backend); the response is awaited before the
next request and only the server side is timed. ``--path /plain`` takes an API without a
policy. Like ``h2_eval.py``, runs made one after the other agree within ~1–2 %; compare a
change with itself in the same minute. Run:

    .venv/bin/python bench/h1_eval.py [--requests 20000] [--runs 3] [--path /thumbprint]

The figure leaves out TLS records and socket calls (``bench/tls_floor.py`` measures those:
~18 µs per keep-alive request on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from h2_eval import MemoryChannel, connection_info, loop_runner
from policy_eval import write_setup

from tlsgate.config.loader import load_config
from tlsgate.http.h1 import H1Connection
from tlsgate.http.messages import ConnectionInfo
from tlsgate.server.runtime import Runtime

_HANDSHAKE_FIELDS = ("sni", "tls_version", "alpn", "cipher", "session_resumed", "hostname",
                     "handshake_certificate", "handshake_chain", "host_settings")
PLAIN_API = '\n[[api]]\nname = "plain"\npath = "/plain"\nbackend = "echo:"\n'


def request_bytes(path: str, close: bool = False) -> bytes:
    closing = "Connection: close\r\n" if close else ""
    return (f"GET {path} HTTP/1.1\r\nHost: localhost:8443\r\n"
            f"User-Agent: tlsgate-bench\r\n{closing}\r\n").encode()


async def run(requests: int, path: str, per_connection: bool = False) -> float:
    """µs of server-side work per request over ``requests`` keep-alive requests, or
    (``per_connection``) one request with ``Connection: close`` per new connection, as in
    the bench's handshake mode: the adapter made for it, its close included."""
    with tempfile.TemporaryDirectory() as tmp:
        setup = write_setup(Path(tmp))
        setup.write_text(setup.read_text() + PLAIN_API)
        config = load_config(setup)
        runtime = Runtime.build(config)
        channel = MemoryChannel()
        handshake = connection_info(Path(tmp) / "pki", config)
        handshake.alpn = "http/1.1"

        def connect() -> H1Connection:
            # as GatewayConnection.connection_made and _on_handshake fill it in
            info = ConnectionInfo(client_address=handshake.client_address)
            for name in _HANDSHAKE_FIELDS:
                setattr(info, name, getattr(handshake, name))
            return H1Connection(channel, info, runtime.gateway.handle, runtime.limits)
        server = connect()
        wire = request_bytes(path, close=per_connection)
        spent = 0.0
        for _ in range(requests):
            started = time.perf_counter()
            if per_connection:
                server = connect()
            server.receive_data(wire)
            while not channel.written:
                await asyncio.sleep(0)                 # the request's task runs
            if per_connection:                  # the socket closed: its task ends
                server.connection_lost()
                for task in channel.tasks:
                    task.cancel()
                channel.tasks.clear()
                await asyncio.sleep(0)
            spent += time.perf_counter() - started
            answer = channel.take()
            if not answer.startswith(b"HTTP/1.1 200 "):
                raise AssertionError(answer[:200])
        return spent / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--path", default="/thumbprint",
                        help="/thumbprint (the seed's policy) or /plain (no policy)")
    parser.add_argument("--per-connection", action="store_true",
                        help="each request on a new connection, with Connection: close")
    args = parser.parse_args()
    runner = loop_runner()
    how = "new connection per request" if args.per_connection else "keep-alive"
    for number in range(1, args.runs + 1):
        micros = runner(run(args.requests, args.path, args.per_connection))
        print(f"run {number}: {micros:.1f} µs per HTTP/1.1 request on {args.path}, {how} "
              f"({args.requests:,} requests)")


if __name__ == "__main__":
    main()
