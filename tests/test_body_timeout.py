"""A client that stops sending a request body it owes: ``idle_timeout`` bounds that silence too
(nginx's ``client_body_timeout``). The request gets 408 and the connection closes, on both
HTTP versions, whichever backend reads the body; a slow but steady client, and the freeze of
``on_demand_body = "stall"`` (the gateway's own doing), are not cut."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import h11
import pytest
from conftest import BASIC_CONFIG, SERVER_CERTIFICATE_AND_ROOT
from httpclients import H2Client, client_context, read_until_closed, tls_socket

CONFIG = BASIC_CONFIG.replace("[gateway]\n", "[gateway]\nidle_timeout = 1\n", 1)

PROXY_API = """
[[api]]
name = "origin"
path = "/origin"
backend = "{origin}"
"""


@pytest.fixture
def gateway(start_gateway, origin):
    return start_gateway(CONFIG + PROXY_API.replace("{origin}", origin.url))


def post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\ncontent-length: {length}\r\n"
            "content-type: application/octet-stream\r\n\r\n").encode()


def parse_answer(raw: bytes) -> h11.Response:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("host", "x"),
                                                                 ("content-length", "1")]))
    client.receive_data(raw)
    event = client.next_event()
    assert type(event) is h11.Response, raw[:300]
    return event


def chunked_head(path: str) -> bytes:
    """A chunked upload: the HTTP/1.1 adapter leaves it to h11 (not the direct path)."""
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
            "transfer-encoding: chunked\r\n\r\n").encode()


STARTS = {
    "head-then-silence": lambda path: post_head(path, 100_000),
    "part-of-body": lambda path: post_head(path, 100_000) + b"x" * 1000,
    "chunked-h11-path": lambda path: chunked_head(path) + b"3e8\r\n" + b"x" * 1000 + b"\r\n",
}


@pytest.mark.parametrize("path", ["/echo", "/origin"])
@pytest.mark.parametrize("start", STARTS)
def test_http1_client_that_stops_sending_its_body_gets_408_and_a_close(gateway, pki, path,
                                                                       start, access_log):
    """A head alone, a head with part of the body (both on the direct path) and a chunked
    upload (h11's path); the echo backend reading the body itself, and an http:// origin
    being uploaded to."""
    with tls_socket(gateway.port, pki) as sock:
        started = time.monotonic()
        sock.sendall(STARTS[start](path))
        raw = read_until_closed(sock)         # the gateway closes the connection after it
        elapsed = time.monotonic() - started
    answer = parse_answer(raw)
    assert answer.status_code == 408, raw[:300]
    assert (b"connection", b"close") in answer.headers
    assert b"Request Timeout" in raw
    assert 0.9 <= elapsed < 6, elapsed          # idle_timeout = 1, checked every second
    line = access_log(1)[0]
    assert line["status"] == 408 and line["reason"] == "BodyTimeout"


def test_http1_slow_but_steady_body_is_not_cut(gateway, pki):
    """The timeout is about silence, not about how long the whole body takes."""
    chunks, piece = 8, b"y" * 10
    with tls_socket(gateway.port, pki) as sock:
        sock.sendall(post_head("/echo", chunks * len(piece)))
        for _ in range(chunks):             # 8 × 0.4 s = 3.2 s > idle_timeout
            time.sleep(0.4)
            sock.sendall(piece)
        sock.settimeout(10)
        raw = sock.recv(65536)
    answer = parse_answer(raw)
    assert answer.status_code == 200, raw[:300]
    assert b'"body_bytes": 80' in raw


def test_http2_stream_whose_body_stops_gets_408(gateway, pki):
    client = H2Client(gateway.port, pki)
    try:
        stream_id = client.request("POST", "/echo", b"z" * 1000, end_stream=False,
                                   headers=[("content-length", "5000")])
        started = time.monotonic()
        stream = client.wait(stream_id, timeout=10)[0]
        assert stream.status == 408
        assert b"Request Timeout" in bytes(stream.data)
        assert 0.9 <= time.monotonic() - started < 6
        # Only that stream ends: the connection serves the next request.
        assert client.get("/echo").status == 200
    finally:
        client.close()


def test_http2_steady_stream_is_not_cut_by_a_stalled_neighbour_s_timeout(gateway, pki):
    """Each body is timed on its own: a stream that keeps sending is served while another
    on the same connection stalls and gets its 408."""
    client = H2Client(gateway.port, pki)
    try:
        stalled = client.request("POST", "/echo", b"a" * 100, end_stream=False,
                                 headers=[("content-length", "1000")])
        steady = client.request("POST", "/echo", b"", end_stream=False,
                                headers=[("content-length", "70")])
        for _ in range(7):
            time.sleep(0.4)
            client.send_body(steady, b"b" * 10, end_stream=False)
        client.conn.end_stream(steady)
        client.flush()
        first, second = client.wait(stalled, steady, timeout=10)
        assert first.status == 408
        assert second.status == 200 and second.json()["body_bytes"] == 70
    finally:
        client.close()



LATE_CONFIG = """
[gateway]
listen = ["127.0.0.1:0"]
data_dir = "{data}"
idle_timeout = 1
""" + SERVER_CERTIFICATE_AND_ROOT + """
[[hostname]]
name = "localhost"
certificate = "gateway"
negotiate_client_certificate = false
on_demand_body = "{mode}"
on_demand_timeout = 10
on_demand_buffer_limit = 1048576

[[api]]
name = "echo"
path = "/echo"
backend = "echo:"
policy = "{policy}"
"""

NEEDS_CERTIFICATE = """<policies><inbound><choose>
<when condition="@(context.Request.Certificate == null)">
<return-response><set-status code="403" /></return-response></when></choose></inbound>
<backend><forward-request /></backend><outbound /><on-error /></policies>"""


def late_certificate_gateway(start_gateway, tmp_path, mode: str):
    """A gateway that asks for the certificate late, with ``on_demand_body = mode``."""
    (tmp_path / "data").mkdir()
    (tmp_path / "policy.xml").write_text(NEEDS_CERTIFICATE)
    return start_gateway(LATE_CONFIG.replace("{data}", str(tmp_path / "data"))
                         .replace("{policy}", str(tmp_path / "policy.xml"))
                         .replace("{mode}", mode))


@pytest.mark.parametrize("mode", ["buffer", "stall", "spool"])
def test_a_steady_body_waiting_for_a_late_certificate_is_not_cut(start_gateway, tmp_path,
                                                                  pki, mode):
    """While the gateway holds a body for the certificate (buffer, stall, spool), each
    piece the client sends counts: 8 pieces 0.4 s apart are never 1 s of silence."""
    gateway = late_certificate_gateway(start_gateway, tmp_path, mode)
    context = client_context(pki)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.post_handshake_auth = True
    pieces, piece = 8, b"y" * 10
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(post_head("/echo", pieces * len(piece)))
        sock.setblocking(False)
        answer = b""
        for _ in range(pieces):
            time.sleep(0.4)
            try:
                answer += sock.recv(65536)      # the certificate request is read here
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            sock.sendall(piece)
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
    assert parse_answer(answer).status_code == 200, answer[:300]


@contextlib.contextmanager
def scripted_origin(serve) -> Iterator[int]:
    """An http:// origin on a loopback port (yielded) whose every connection is handled by
    ``serve(reader, writer)``, on an event loop of its own thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    ports: list[int] = []

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        ports.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(5)
    try:
        yield ports[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


async def answer_at_once_then_trickle(reader: asyncio.StreamReader,
                                      writer: asyncio.StreamWriter) -> None:
    """Answers without reading the upload; 8 × 10 body bytes, 0.4 s apart."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    for _ in range(8):
        writer.write(b"a\r\n0123456789\r\n")
        await writer.drain()
        await asyncio.sleep(0.4)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def answer_then_break_the_body(reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n")
    await writer.drain()
    writer.close()                          # the body's end never comes


@pytest.fixture
def early_origin():
    with scripted_origin(answer_at_once_then_trickle) as port:
        yield port


def test_a_client_silent_after_the_answer_began_gets_all_of_it(start_gateway, pki,
                                                               early_origin):
    """Once the response has begun, a client may stop sending its body (it has its
    answer): that silence is not a stall, and the streamed answer is not cut."""
    gateway = start_gateway(CONFIG + PROXY_API.replace(
        "{origin}", f"http://127.0.0.1:{early_origin}"))
    with tls_socket(gateway.port, pki) as sock:
        sock.sendall(post_head("/origin", 100_000) + b"x" * 1000)
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="POST", target="/", headers=[("host", "x"),
                                                                     ("content-length", "1")]))
        body, status = b"", None
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(65536))
            elif type(event) is h11.Response:
                status = event.status_code
            elif type(event) is h11.Data:
                body += event.data
            else:
                break
    assert status == 200 and type(event) is h11.EndOfMessage and len(body) == 80


# -- a policy reading the backend's answer ---------------------------------------------------

READS_RESPONSE_BODY = """<policies><inbound /><backend><forward-request /></backend><outbound>
<set-header name="x-length" exists-action="override"><value>@(context.Response.Body.As<string>(
preserveContent: true).Length.ToString())</value></set-header></outbound><on-error /></policies>"""


def policy_origin_gateway(start_gateway, tmp_path, port: int):
    (tmp_path / "policy.xml").write_text(READS_RESPONSE_BODY)
    return start_gateway(CONFIG + PROXY_API.replace("{origin}", f"http://127.0.0.1:{port}")
                         .replace('backend = "http', f'policy = "{tmp_path / "policy.xml"}"\n'
                                  'backend = "http'))


def test_a_client_stalling_while_a_policy_reads_the_answer_gets_408(start_gateway, tmp_path,
                                                                    pki, access_log):
    """The answer has not begun for the client (outbound waits for the backend's body), so
    the client's silence is a stall; the upload's failure is reported as such, not as the
    backend's."""
    with scripted_origin(answer_at_once_then_trickle) as port:
        gateway = policy_origin_gateway(start_gateway, tmp_path, port)
        with tls_socket(gateway.port, pki) as sock:
            sock.sendall(post_head("/origin", 100_000) + b"x" * 1000)
            raw = read_until_closed(sock)
    assert parse_answer(raw).status_code == 408, raw[:300]
    assert access_log(1)[0]["reason"] == "BodyTimeout"


def test_a_backend_body_breaking_while_a_policy_reads_it_is_502(start_gateway, tmp_path, pki,
                                                                no_tracebacks):
    with scripted_origin(answer_then_break_the_body) as port:
        gateway = policy_origin_gateway(start_gateway, tmp_path, port)
        with tls_socket(gateway.port, pki) as sock:
            sock.sendall(b"GET /origin HTTP/1.1\r\nHost: localhost\r\n\r\n")
            sock.settimeout(10)
            raw = sock.recv(65536)
    answer = parse_answer(raw)
    assert answer.status_code == 502, raw[:300]
    assert b"Bad Gateway" in raw


@pytest.mark.parametrize("mode", ["buffer", "stall"])
def test_a_client_stalling_while_its_body_is_held_for_the_certificate_gets_408(
        start_gateway, tmp_path, pki, mode, access_log):
    """Buffer and stall modes read (part of) the body before asking for the certificate; a
    client silent meanwhile gets its 408 then, and no certificate is asked for."""
    gateway = late_certificate_gateway(start_gateway, tmp_path, mode)
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    # A certificate request would now end the connection (OpenSSL's server treats a refused
    # renegotiation as fatal): only a 408 sent before any request can reach this client.
    context.options |= ssl.OP_NO_RENEGOTIATION
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(post_head("/echo", 1000) + b"x" * 100)
        time.sleep(2.5)
        answer = read_until_closed(sock)
    assert parse_answer(answer).status_code == 408, answer[:300]
    line = access_log(1)[0]
    assert line["reason"] == "BodyTimeout" and line["duration_ms"] < 4000
