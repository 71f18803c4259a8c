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
from tlsgate.server.runtime import Runtime

PLAIN_API = '\n[[api]]\nname = "plain"\npath = "/plain"\nbackend = "echo:"\n'


def request_bytes(path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: localhost:8443\r\n"
            "User-Agent: tlsgate-bench\r\n\r\n").encode()


async def run(requests: int, path: str) -> float:
    """µs of server-side work per request over ``requests`` keep-alive requests."""
    with tempfile.TemporaryDirectory() as tmp:
        setup = write_setup(Path(tmp))
        setup.write_text(setup.read_text() + PLAIN_API)
        config = load_config(setup)
        runtime = Runtime.build(config)
        channel = MemoryChannel()
        info = connection_info(Path(tmp) / "pki", config)
        info.alpn = "http/1.1"
        server = H1Connection(channel, info, runtime.gateway.handle, runtime.limits)
        wire = request_bytes(path)
        spent = 0.0
        for _ in range(requests):
            started = time.perf_counter()
            server.receive_data(wire)
            while not channel.written:
                await asyncio.sleep(0)                 # the request's task runs
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
    args = parser.parse_args()
    runner = loop_runner()
    for number in range(1, args.runs + 1):
        micros = runner(run(args.requests, args.path))
        print(f"run {number}: {micros:.1f} µs per HTTP/1.1 request on {args.path} "
              f"({args.requests:,} requests)")


if __name__ == "__main__":
    main()
