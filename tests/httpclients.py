"""Real HTTP clients for the end-to-end tests, and an origin server that runs in a subprocess.

- :func:`curl` runs curl with the dev PKI (client certificate by default).
- :func:`tls_socket` is a Python ``ssl`` socket to the gateway (raw HTTP/1.1 or HTTP/2 bytes).
- :class:`H2Client` drives the ``h2`` library as a client over such a socket.
- :class:`OriginProcess` (and ``python tests/httpclients.py origin``) is an HTTP/1.1 origin
  for ``http://`` backends: it hashes request bodies, serves large downloads, answers slowly
  on request, and reports the headers it received. It runs in its own process so that the
  gateway's memory can be measured with tracemalloc without counting the origin.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import h11

CHUNK = bytes(range(256)) * 256                 # the echo backend's download pattern (64 KiB)


def pattern_sha256(size: int) -> str:
    """SHA-256 of the ``size``-byte pattern the echo backend's ``?size=`` serves."""
    digest = hashlib.sha256()
    for offset in range(0, size, len(CHUNK)):
        digest.update(CHUNK[:size - offset])
    return digest.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tlsgate_errors(records) -> list[str]:
    """Log records at ERROR or with a traceback from tlsgate, or from the event loop (an
    exception escaping a protocol callback: "Fatal error on transport"): none may happen."""
    return [f"{r.name}: {r.getMessage()}" for r in records
            if (r.name.startswith("tlsgate") or r.name == "asyncio")
            and (r.levelno >= 40 or r.exc_info)]


# -- curl ----------------------------------------------------------------------------------

def curl(port: int, pki: Path, *args: str, path: str = "/echo", host: str = "localhost",
         cert: str | None = "client", timeout: float = 20, url: str | None = None,
         resolve: bool = False, text: bool = False) -> subprocess.CompletedProcess:
    """Run curl against the gateway (the one curl helper of the tests).

    ``cert`` names a dev PKI client certificate, or None for none; ``resolve`` sends ``host``
    to 127.0.0.1 (so SNI and Host are ``host`` whatever it is); ``text`` decodes the output.
    """
    exe = shutil.which("curl")
    assert exe, "curl is not installed: `make test` installs it (make sysdeps)"
    command = [exe, "-sS", "--max-time", str(timeout), "--cacert", str(pki / "root.pem")]
    if resolve:
        command += ["--resolve", f"{host}:{port}:127.0.0.1"]
    if cert:
        command += ["--cert", str(pki / f"{cert}.pem"), "--key", str(pki / f"{cert}.key")]
    command += [*args, url or f"https://{host}:{port}{path}"]
    return subprocess.run(command, capture_output=True, text=text,
                          errors="replace" if text else None, timeout=timeout + 10)


# -- TLS sockets ---------------------------------------------------------------------------

def client_context(pki: Path, *, cert: str | None = "client",
                   alpn: tuple[str, ...] | None = ("http/1.1",)) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "root.pem"))
    if cert:
        context.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def tls_socket(port: int, pki: Path, *, cert: str | None = "client",
               alpn: tuple[str, ...] | None = ("http/1.1",), server_hostname: str = "localhost",
               timeout: float = 10) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return client_context(pki, cert=cert, alpn=alpn).wrap_socket(
        raw, server_hostname=server_hostname)


def get_with_session(port: int, context: ssl.SSLContext, path: str,
                     session: ssl.SSLSession | None = None) -> tuple[bytes, ssl.SSLSession, bool]:
    """GET ``path`` (Connection: close) on a new TLS connection that offers ``session``: the
    whole answer, the connection's latest session (after any renegotiation or post-handshake
    authentication, with the tickets that followed) and whether the handshake resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
                    "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer, tls.session, tls.session_reused


@dataclass
class H1Response:
    status: int
    headers: dict[str, str]
    body: bytes
    reason: bytes = b""
    interim: list[int] = field(default_factory=list)      # 1xx statuses before this one

    def json(self) -> dict:
        return json.loads(self.body)


def read_h1_responses(sock: ssl.SSLSocket, count: int, *,
                      methods: list[bytes] | None = None) -> list[H1Response]:
    """Read ``count`` HTTP/1.1 responses from a socket with h11 (client side)."""
    conn = h11.Connection(h11.CLIENT)
    responses: list[H1Response] = []
    methods = methods or [b"GET"] * count
    for method in methods:
        # h11 needs to know the request it is reading the answer to (HEAD has no body).
        conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        status, headers, body, reason, interim = 0, {}, bytearray(), b"", []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                conn.receive_data(data)
                continue
            if type(event) is h11.InformationalResponse:
                interim.append(event.status_code)
            elif type(event) is h11.Response:
                status, reason = event.status_code, event.reason
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                break
            elif type(event) is h11.ConnectionClosed:
                raise ConnectionError("connection closed before the response ended")
        responses.append(H1Response(status, headers, bytes(body), reason, interim))
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    return responses


def read_until_closed(sock: ssl.SSLSocket) -> bytes:
    out = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            break
        if not data:
            break
        out += data
    return bytes(out)


# -- HTTP/2 client -------------------------------------------------------------------------

@dataclass
class H2Stream:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None                 # RST_STREAM error code from the server
    data_frames: int = 0
    ended_by_data: bool = False              # END_STREAM came on a DATA frame with data

    @property
    def status(self) -> int:
        return int(self.headers[":status"])

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def json(self) -> dict:
        return json.loads(bytes(self.data))


class H2Client:
    """A blocking HTTP/2 client: the ``h2`` library over a Python ssl socket (ALPN h2).

    ``auto_ack`` acknowledges received DATA at once (the window stays at its default 65535
    bytes but keeps reopening); otherwise the test acknowledges by itself.
    """

    def __init__(self, port: int, pki: Path, *, cert: str | None = "client",
                 server_hostname: str = "localhost", auto_ack: bool = True,
                 send_preface: bool = True) -> None:
        self.sock = tls_socket(port, pki, cert=cert, alpn=("h2",),
                               server_hostname=server_hostname)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.auto_ack = auto_ack
        self.streams: dict[int, H2Stream] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.remote_settings_received = False
        if send_preface:
            self.conn.initiate_connection()
            self.flush()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes | None = None, *,
                headers: list[tuple[str, str]] = (), end_stream: bool = True,
                authority: str = "localhost") -> int:
        stream_id = self.conn.get_next_available_stream_id()
        head = [(":method", method), (":scheme", "https"), (":authority", authority),
                (":path", path), *headers]
        if body is not None and end_stream:
            head.append(("content-length", str(len(body))))
        self.streams[stream_id] = H2Stream()
        self.conn.send_headers(stream_id, head, end_stream=end_stream and not body)
        self.flush()
        if body:
            self.send_body(stream_id, body, end_stream=end_stream)
        return stream_id

    def send_body(self, stream_id: int, body: bytes, *, end_stream: bool = True) -> None:
        """Send ``body``, waiting for the server's flow-control window as needed."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(stream_id),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self.receive_once()
                if self.streams[stream_id].done:
                    return
                continue
            self.conn.send_data(stream_id, view[:window].tobytes())
            view = view[window:]
            self.flush()
        if end_stream:
            self.conn.end_stream(stream_id)
            self.flush()

    def receive_once(self, timeout: float = 10) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            data = b""
        if not data:
            self.closed = True
            raise ConnectionError("server closed the connection")
        for event in self.conn.receive_data(data):
            self._on_event(event)
        self.flush()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.streams[event.stream_id].headers = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams[event.stream_id]
            stream.data += event.data
            stream.data_frames += 1
            stream.ended_by_data = bool(event.data) and event.stream_ended is not None
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams:
                self.streams[event.stream_id].reset = event.error_code
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.remote_settings_received = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def wait(self, *stream_ids: int, timeout: float = 20) -> list[H2Stream]:
        deadline = time.monotonic() + timeout
        while not all(self.streams[s].done for s in stream_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"streams {stream_ids} not done")
            self.receive_once(max(0.1, deadline - time.monotonic()))
        return [self.streams[s] for s in stream_ids]

    def wait_settings(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.remote_settings_received:
            if time.monotonic() > deadline:
                raise TimeoutError("no SETTINGS from the server")
            self.receive_once()

    def get(self, path: str, **kwargs) -> H2Stream:
        return self.wait(self.request("GET", path, **kwargs))[0]

    def post(self, path: str, body: bytes, **kwargs) -> H2Stream:
        return self.wait(self.request("POST", path, body, **kwargs))[0]


# -- the origin server (subprocess) ----------------------------------------------------------

class OriginProcess:
    """``python tests/httpclients.py origin`` on 127.0.0.1, port chosen by the OS.

    Every answer carries the JSON summary of the request in ``x-origin`` (headers received,
    body size and hash) and, without ``?size=``, as the body too. Query: ``size=N`` streams
    the echo pattern (N bytes); ``delay=S`` waits S seconds before answering; ``chunked=1``
    leaves Content-Length out (h11 then sends the body chunked).
    """

    def __enter__(self) -> OriginProcess:
        self.process = subprocess.Popen([sys.executable, __file__, "origin"],
                                        stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        self.port = int(line.split()[-1])
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.terminate()
        self.process.wait(10)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _origin_main() -> None:
    import asyncio
    from urllib.parse import parse_qs, urlsplit

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)

        async def next_event():
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await reader.read(262144))
            return event
        try:
            while type(request := await next_event()) is h11.Request:
                digest, count = hashlib.sha256(), 0
                while type(event := await next_event()) is h11.Data:
                    digest.update(event.data)
                    count += len(event.data)
                query = parse_qs(urlsplit(request.target.decode()).query)
                summary = json.dumps({
                    "method": request.method.decode(), "target": request.target.decode(),
                    "headers": [[k.decode(), v.decode()] for k, v in request.headers],
                    "body_bytes": count, "body_sha256": digest.hexdigest()}).encode()
                if "delay" in query:
                    await asyncio.sleep(float(query["delay"][0]))
                size = int(query["size"][0]) if "size" in query else None
                body_length = size if size is not None else len(summary)
                framing = [] if "chunked" in query else [
                    (b"content-length", str(body_length).encode())]
                writer.write(conn.send(h11.Response(status_code=200, headers=[
                    *framing, (b"x-origin", summary)])))
                if request.method != b"HEAD":
                    if size is None:
                        writer.write(conn.send(h11.Data(data=summary)))
                    else:
                        full, rest = divmod(size, len(CHUNK))
                        for _ in range(full):
                            writer.write(conn.send(h11.Data(data=CHUNK)))
                            await writer.drain()
                        if rest:
                            writer.write(conn.send(h11.Data(data=CHUNK[:rest])))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        print("listening on", server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1:] == ["origin"]:
        _origin_main()
