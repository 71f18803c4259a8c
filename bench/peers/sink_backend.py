"""The plain http:// backend behind every server's /upload (scenario e) in ``tlsgate bench``.

    python sink_backend.py PORT

Keep-alive HTTP/1.1 (Content-Length or chunked bodies), reads and drops the body, answers
200 'ok'. asyncio + uvloop, one process; deliberately tiny so it costs the same whichever
server proxies to it.
"""

from __future__ import annotations

import asyncio
import sys

RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
            b"connection: keep-alive\r\n\r\nok")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if b"content-length" in headers:
                left = int(headers[b"content-length"])
                while left:
                    chunk = await reader.read(min(left, 1 << 18))
                    if not chunk:
                        return
                    left -= len(chunk)
            elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")        # (no trailers sent here)
                        break
                    await reader.readexactly(size + 2)
            writer.write(RESPONSE)
            if headers.get(b"connection", b"").lower() == b"close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 20,
                                        backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
