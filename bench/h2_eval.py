"""Micro-benchmark: tlsgate's HTTP/2 path per request, in one process, without sockets or TLS.

An ``h2`` client hands batches of 10 GET requests to tlsgate's HTTP/2 adapter
(``tlsgate.http.h2.H2Connection``) wired to the real gateway (router, the seed's thumbprint
policy with ``Verify()``, the echo backend), and feeds the answers back; only the server side
is timed. With no network, no TLS and no second process, runs made one after the other
usually agree within 1–2 %, so changes of a few µs show, which ``tlsgate bench`` (±3 % from
run to run) cannot resolve. Compare before and after in the same minute: the machine's
neighbours move every figure.
Run:

    .venv/bin/python bench/h2_eval.py [--batches 3000] [--runs 3]

It prints µs per request for each run. The figure leaves out TLS records and socket writes;
compare it with itself, not with ``tlsgate bench``'s server CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from policy_eval import write_setup

from tlsgate.config.loader import load_config
from tlsgate.http.h2 import H2Connection
from tlsgate.http.messages import ConnectionInfo
from tlsgate.server.runtime import Runtime
from tlsgate.tls.session import intern_certificate

STREAMS_PER_BATCH = 10
REQUEST = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
           (":path", "/thumbprint"), ("user-agent", "h2-eval"), ("accept", "*/*")]


class MemoryChannel:
    """The connection as the adapter sees it (``PlaintextChannel``), writing into a list."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.tasks: list[asyncio.Task] = []     # spawned, for a caller that ends them

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data

    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    async def drain(self) -> None: ...
    def request_started(self) -> None: ...
    def request_finished(self) -> None: ...

    def spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    async def client_certificate(self, request):
        return None


def connection_info(pki: Path, config) -> ConnectionInfo:
    """What a TLS handshake with the dev client certificate gives (interned, as in tlsgate)."""
    leaf, *chain = x509.load_pem_x509_certificates((pki / "client.pem").read_bytes())
    der = serialization.Encoding.DER
    return ConnectionInfo(
        ("127.0.0.1", 50000), sni="localhost", tls_version="TLSv1.3",
        alpn="h2", handshake_certificate=intern_certificate(leaf.public_bytes(der)),
        handshake_chain=tuple(intern_certificate(c.public_bytes(der)) for c in chain),
        host_settings=config.hostnames[0])


async def run(batches: int) -> float:
    """µs of server-side work per request over ``batches`` batches of 10 streams."""
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_setup(Path(tmp)))
        runtime = Runtime.build(config)
        channel = MemoryChannel()
        server = H2Connection(channel, connection_info(Path(tmp) / "pki", config),
                              runtime.gateway.handle, runtime.limits)
        client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        server.receive_data(client.data_to_send())
        client.receive_data(channel.take())
        server.receive_data(client.data_to_send())        # the SETTINGS acknowledgement
        served, spent = 0, 0.0
        for _ in range(batches):
            for _ in range(STREAMS_PER_BATCH):
                client.send_headers(client.get_next_available_stream_id(), REQUEST,
                                    end_stream=True)
            requests = client.data_to_send()
            started = time.perf_counter()
            server.receive_data(requests)
            await asyncio.sleep(0)                        # the streams' tasks run to the end
            spent += time.perf_counter() - started
            for event in client.receive_data(channel.take()):
                if isinstance(event, h2.events.DataReceived):   # reopen the window
                    client.acknowledge_received_data(event.flow_controlled_length,
                                                     event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    served += 1
            updates = client.data_to_send()
            started = time.perf_counter()
            server.receive_data(updates)
            spent += time.perf_counter() - started
        assert served == batches * STREAMS_PER_BATCH, served
        return spent / served * 1e6


def loop_runner():
    """``uvloop.run`` when installed (as tlsgate serves), else ``asyncio.run``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3000, help="of 10 requests, per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runner = loop_runner()
    for number in range(1, args.runs + 1):
        micros = runner(run(args.batches))
        print(f"run {number}: {micros:.1f} µs per HTTP/2 request "
              f"({args.batches * STREAMS_PER_BATCH:,} requests)")


if __name__ == "__main__":
    main()
