"""The floor under tlsgate: the least a Python server on this TLS stack can spend per request.

A bare asyncio Protocol (uvloop) over pyOpenSSL memory BIOs, on the TLS contexts tlsgate
builds from a configuration (same certificate, client-certificate request, session cache and
options), that answers every request head with a constant ``200 ok`` and closes after the
client's close_notify, as tlsgate does. No HTTP parsing beyond finding the end of a head, no
routing, no policy, no backend, no timers: what remains is OpenSSL, the kernel, the event
loop and a dozen Python calls per read. ``tlsgate bench`` against it tells how much of
tlsgate's cost per request is its own work (README, "How to benchmark"):

    taskset -c 0 .venv/bin/python bench/tls_floor.py --config bench-gateway.toml --port 19443 &
    taskset -c 1 .venv/bin/tlsgate bench --target https://localhost:19443/ \\
        --mode handshake,h1 --server-pid $!

Not a server to deploy, and HTTP/1.1 only: the modes ``handshake``, ``resume`` and ``h1``.
"""

from __future__ import annotations

import argparse
import asyncio

from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from tlsgate.config.loader import load_config
from tlsgate.tls.contexts import TLSContexts

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
_READ_SIZE = 65536
_allocate = _ffi.new_allocator(should_clear_after_alloc=False)


class FloorConnection(asyncio.Protocol):
    """One client: handshake, a constant answer per request head, close after the client."""

    def __init__(self, contexts: TLSContexts) -> None:
        self._contexts = contexts
        self._pending = b""            # plaintext of a request head not complete yet

    def connection_made(self, transport) -> None:
        self._transport = transport
        # The hostname context for "localhost" (the bench's SNI), chosen without reading
        # the ClientHello: tlsgate reads it first, which this floor leaves out.
        self._conn, _ = self._contexts.new_connection("localhost")
        self._ssl = self._conn._ssl
        self._handshaken = False

    def data_received(self, data: bytes) -> None:
        _lib.BIO_write(self._conn._into_ssl, data, len(data))
        if not self._handshaken:
            result = _lib.SSL_do_handshake(self._ssl)
            if result != 1:
                self._flush_or_fail(_lib.SSL_get_error(self._ssl, result))
                return
            self._handshaken = True
            self._conn.get_peer_certificate()      # the certificate, as any mTLS server reads
        while True:
            buffer = _allocate("char[]", _READ_SIZE)
            size = _lib.SSL_read(self._ssl, buffer, _READ_SIZE)
            if size <= 0:
                break
            self._answer_heads(_ffi.buffer(buffer, size)[:])
        error = _lib.SSL_get_error(self._ssl, size)
        if error == _lib.SSL_ERROR_ZERO_RETURN:             # close_notify: close too
            _lib.SSL_shutdown(self._ssl)
            self._flush()
            self._transport.close()
            return
        self._flush_or_fail(error)

    def _answer_heads(self, plaintext: bytes) -> None:
        data = self._pending + plaintext
        heads = data.count(b"\r\n\r\n")
        if heads:
            answer = ANSWER * heads
            _lib.SSL_write(self._ssl, answer, len(answer))
        self._pending = data[data.rfind(b"\r\n\r\n") + 4:] if heads else data

    def _flush_or_fail(self, error: int) -> None:
        self._flush()
        if error not in (_lib.SSL_ERROR_WANT_READ, _lib.SSL_ERROR_NONE):
            _lib.ERR_clear_error()
            self._transport.close()

    def _flush(self) -> None:
        buffer = _allocate("char[]", _READ_SIZE)
        chunks = []
        while (size := _lib.BIO_read(self._conn._from_ssl, buffer, _READ_SIZE)) > 0:
            chunks.append(_ffi.buffer(buffer, size)[:])
        if chunks:
            self._transport.write(b"".join(chunks))

    def eof_received(self) -> bool:
        return False


async def serve(contexts: TLSContexts, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorConnection(contexts), host, port,
                                      backlog=1024)
    print(f"floor server on https://{host}:{port}/ (constant answer)", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a tlsgate config: its TLS contexts")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19443)
    args = parser.parse_args()
    contexts = TLSContexts(load_config(args.config))
    try:
        import uvloop
    except ImportError:         # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(contexts, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
