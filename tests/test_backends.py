"""Backends: the built-in echo backend and the pooled HTTP/1.1 reverse proxy.

Every HTTP test runs a real origin server (asyncio streams + h11) on 127.0.0.1 port 0, in the
same event loop as the backend under test, so connection counts and the bytes the origin saw
can be asserted directly.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tlsgate.backends import BackendError, close_all, make_backend
from tlsgate.backends.echo import EchoBackend
from tlsgate.backends.http import HttpBackend
from tlsgate.config.model import ApiSettings
from tlsgate.http.messages import BodyTooLarge, ConnectionInfo, Request, RequestBody, Response

MB = 1024 * 1024
CHUNK = bytes(range(256)) * 256            # 64 KiB


def run(coro: Awaitable) -> object:
    async def bounded():
        return await asyncio.wait_for(coro, 60)
    return asyncio.run(bounded())


def make_request(method: str = "GET", path: str = "/", query: str = "", headers=(),
                 body: RequestBody | None = None, authority: str = "gw.example") -> Request:
    return Request(method, path, query, list(headers), body or RequestBody.empty(),
                   ConnectionInfo(("127.0.0.1", 5555)),
                   authority=authority)


def fixed_body(data: bytes) -> RequestBody:
    body = RequestBody(len(data))
    body.feed(data)
    body.finish()
    return body


def streamed_body(total: int, *, known_length: bool = True
                  ) -> tuple[RequestBody, Callable[[], Awaitable[None]]]:
    """A body fed in 64 KiB chunks by a producer that honours pause/resume like a socket."""
    flowing = asyncio.Event()
    flowing.set()
    body = RequestBody(total if known_length else None, pause=flowing.clear,
                       resume=flowing.set)

    async def produce() -> None:
        sent = 0
        while sent < total:
            await flowing.wait()
            piece = CHUNK if total - sent >= len(CHUNK) else CHUNK[:total - sent]
            body.feed(piece)
            sent += len(piece)
            await asyncio.sleep(0)
        body.finish()
    return body, produce


def expected_digest(total: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, total, len(CHUNK)):
        digest.update(CHUNK[:total - offset])
    return digest.hexdigest()


async def read_body(response: Response) -> bytes:
    if isinstance(response.body, (bytes, bytearray)):
        return bytes(response.body)
    return b"".join([bytes(chunk) async for chunk in response.body])


async def read_json(response: Response) -> dict:
    return json.loads(await read_body(response))


# -- the origin server ------------------------------------------------------------------------

class Drop(Exception):
    """Raised by a handler (or its body) to close the connection on the spot."""


@dataclass
class OriginRequest:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    connection_id: int
    sequence: int                          # 1 for the first request on its connection
    _next: Callable[[], Awaitable[h11.Event]] = field(repr=False)

    def header(self, name: bytes) -> bytes | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    async def chunks(self, delay: float = 0.0) -> AsyncIterator[bytes]:
        while True:
            event = await self._next()
            if type(event) is h11.EndOfMessage:
                return
            yield bytes(event.data)
            if delay:
                await asyncio.sleep(delay)

    async def digest(self, delay: float = 0.0) -> tuple[int, str]:
        digest, count = hashlib.sha256(), 0
        async for chunk in self.chunks(delay):
            digest.update(chunk)
            count += len(chunk)
        return count, digest.hexdigest()


Handler = Callable[[OriginRequest], Awaitable[tuple[int, list, object]]]


class Origin:
    """HTTP/1.1 keep-alive server; ``handler`` returns (status, headers, bytes | async iter)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[OriginRequest] = []

    async def __aenter__(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection_id = self.connections
        conn = h11.Connection(h11.SERVER)
        sequence = 0

        async def next_event() -> h11.Event:
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            return event
        try:
            while type(event := await next_event()) is h11.Request:
                sequence += 1
                request = OriginRequest(event.method.decode(), event.target.decode(),
                                        list(event.headers), connection_id, sequence,
                                        next_event)
                self.requests.append(request)
                await self._respond(conn, writer, await self.handler(request))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (Drop, ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                       answer: tuple[int, list, object]) -> None:
        status, headers, body = answer
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        if isinstance(body, bytes):
            if body:
                writer.write(conn.send(h11.Data(data=body)))
        else:
            async for chunk in body:
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


async def describe(request: OriginRequest) -> tuple[int, list, bytes]:
    """Default handler: JSON with what the origin received."""
    count, sha = await request.digest()
    data = json.dumps({
        "method": request.method, "target": request.target,
        "headers": [[k.decode(), v.decode()] for k, v in request.headers],
        "body_bytes": count, "body_sha256": sha, "connection": request.connection_id,
    }).encode()
    return 200, [(b"content-type", b"application/json"),
                 (b"content-length", str(len(data)).encode()),
                 (b"connection", b"x-response-hop"), (b"x-response-hop", b"1"),
                 (b"x-origin", b"yes")], data


def header_map(payload: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in payload["headers"]:
        out.setdefault(name, []).append(value)
    return out


# -- HttpBackend: forwarding ----------------------------------------------------------------

def test_api_path_prefix_is_replaced_by_the_base_path():
    """As API Management maps its API URL suffix onto the web service URL."""
    async def scenario():
        async with Origin(describe) as origin:
            backend = HttpBackend(origin.url + "/base", timeout=5, api_path="/shop")
            targets = []
            for path in ("/shop", "/shop/items/1"):
                response = await backend.handle(make_request("GET", path, "q=1"))
                targets.append((await read_json(response))["target"])
            await backend.aclose()
            return targets

    assert run(scenario()) == ["/base?q=1", "/base/items/1?q=1"]


def test_get_forwards_end_to_end_headers_and_strips_hop_by_hop():
    async def scenario():
        async with Origin(describe) as origin:
            backend = HttpBackend(origin.url + "/base/", timeout=5)
            request = make_request("GET", "/items/1", "x=1&y=2", headers=[
                (b"host", b"gw.example"), (b"accept", b"application/json"),
                (b"connection", b"keep-alive, x-hop-custom"), (b"x-hop-custom", b"secret"),
                (b"keep-alive", b"timeout=5"), (b"te", b"trailers"), (b"upgrade", b"h2c"),
                (b"proxy-connection", b"keep-alive"), (b"trailer", b"x-t"),
                (b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-proto", b"http"),
                (b"x-forwarded-host", b"spoofed.example"),
                (b"client-cert", b":MIIB:"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
            ])
            response = await backend.handle(request)
            payload = await read_json(response)
            await backend.aclose()
            return origin, response, payload

    origin, response, payload = run(scenario())
    assert response.status == 200
    assert payload["method"] == "GET"
    assert payload["target"] == "/base/items/1?x=1&y=2"
    headers = header_map(payload)
    for hop in ("connection", "keep-alive", "te", "upgrade", "proxy-connection", "trailer",
                "x-hop-custom", "transfer-encoding"):
        assert hop not in headers, hop
    assert headers["host"] == [f"127.0.0.1:{origin.port}"]
    assert headers["accept"] == ["application/json"]
    assert headers["client-cert"] == [":MIIB:"]
    assert headers["cookie"] == ["a=1; b=2"]
    assert headers["x-forwarded-for"] == ["10.0.0.1, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["https"]
    assert headers["x-forwarded-host"] == ["gw.example"]
    assert "content-length" not in headers          # a GET without body gets no framing
    names = [name for name, _ in response.headers]
    assert b"x-origin" in names
    assert b"connection" not in names and b"x-response-hop" not in names
    assert b"content-length" not in names           # carried by Response.content_length
    assert response.content_length == len(json.dumps(payload).encode())


def test_x_forwarded_for_is_set_from_the_client_address():
    async def scenario():
        async with Origin(describe) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            payload = await read_json(await backend.handle(make_request(path="/")))
            await backend.aclose()
            return payload

    headers = header_map(run(scenario()))
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["https"]


def test_post_with_content_length():
    async def scenario():
        async with Origin(describe) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            request = make_request("POST", "/submit", headers=[
                (b"content-type", b"text/plain"), (b"content-length", b"11")],
                body=fixed_body(b"hello world"))
            response = await backend.handle(request)
            payload = await read_json(response)
            await backend.aclose()
            return response, payload

    response, payload = run(scenario())
    assert response.status == 200
    assert payload["method"] == "POST" and payload["target"] == "/submit"
    assert payload["body_bytes"] == 11
    assert payload["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert header_map(payload)["content-length"] == ["11"]


def test_chunked_request_body_when_length_unknown():
    total = 300_000

    async def scenario():
        async with Origin(describe) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            body, produce = streamed_body(total, known_length=False)
            producer = asyncio.create_task(produce())
            payload = await read_json(await backend.handle(make_request("PUT", "/u", body=body)))
            await producer
            await backend.aclose()
            return payload

    payload = run(scenario())
    headers = header_map(payload)
    assert headers["transfer-encoding"] == ["chunked"]
    assert "content-length" not in headers
    assert payload["body_bytes"] == total
    assert payload["body_sha256"] == expected_digest(total)


def test_keep_alive_connection_is_reused_for_sequential_requests():
    async def scenario():
        async with Origin(describe) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            seen = []
            for i in range(4):
                body = fixed_body(b"x" * i) if i % 2 else None
                method = "POST" if body else "GET"
                payload = await read_json(await backend.handle(make_request(method, body=body)))
                seen.append(payload["connection"])
            idle = len(backend.pool)
            await backend.aclose()
            return origin.connections, seen, idle

    connections, seen, idle = run(scenario())
    assert connections == 1
    assert seen == [1, 1, 1, 1]
    assert idle == 1


def test_bodyless_response_releases_the_connection_at_once():
    async def no_content(request: OriginRequest):
        await request.digest()
        if request.method == "HEAD":
            return 200, [(b"content-length", b"1234")], b""
        return 204, [(b"x-origin", b"yes")], b""

    async def scenario():
        async with Origin(no_content) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            first = await backend.handle(make_request("DELETE", "/thing"))
            idle_after_first = len(backend.pool)
            second = await backend.handle(make_request("HEAD", "/thing"))
            await backend.aclose()
            return origin.connections, first, second, idle_after_first

    connections, first, second, idle = run(scenario())
    assert first.status == 204 and first.body == b"" and first.content_length is None
    assert second.status == 200 and second.body == b"" and second.content_length == 1234
    assert b"content-length" not in dict(second.headers)
    assert idle == 1 and connections == 1


# -- HttpBackend: failures ------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_502():
    async def scenario():
        backend = HttpBackend(f"http://127.0.0.1:{closed_port()}", timeout=5)
        response = await backend.handle(make_request())
        return response, json.loads(response.body)

    response, payload = run(scenario())
    assert response.status == 502
    assert payload["message"] == "Bad Gateway: backend unreachable"
    assert (b"content-type", b"application/json") in response.headers


def test_slow_origin_is_504_after_the_timeout():
    async def never_answers(request: OriginRequest):
        await asyncio.sleep(30)
        raise Drop()

    async def scenario():
        async with Origin(never_answers) as origin:
            backend = HttpBackend(origin.url, timeout=0.5)
            started = time.monotonic()
            response = await backend.handle(make_request())
            elapsed = time.monotonic() - started
            await backend.aclose()
            return response, elapsed

    response, elapsed = run(scenario())
    assert response.status == 504
    assert json.loads(response.body)["statusCode"] == 504
    assert 0.45 <= elapsed < 2


def test_head_timeout_counts_from_the_end_of_a_slow_upload():
    """A client that uploads slowly must not turn into a 504: the clock starts after it."""
    async def scenario():
        async with Origin(describe) as origin:
            backend = HttpBackend(origin.url, timeout=0.3)
            body = RequestBody(6)

            async def slow_client():
                for piece in (b"ab", b"cd", b"ef"):
                    await asyncio.sleep(0.2)
                    body.feed(piece)
                body.finish()
            client = asyncio.create_task(slow_client())
            response = await backend.handle(make_request("POST", body=body))
            payload = await read_json(response)
            await client
            await backend.aclose()
            return response, payload

    response, payload = run(scenario())
    assert response.status == 200
    assert payload["body_bytes"] == 6


def test_origin_that_stops_reading_the_upload_is_504():
    async def never_reads(request: OriginRequest):
        await asyncio.sleep(30)
        raise Drop()

    async def scenario():
        async with Origin(never_reads) as origin:
            backend = HttpBackend(origin.url, timeout=0.5)
            body, produce = streamed_body(64 * MB)
            producer = asyncio.create_task(produce())
            response = await backend.handle(make_request("POST", body=body))
            producer.cancel()
            await backend.aclose()
            return response, body.received

    response, received = run(scenario())
    assert response.status == 504
    assert received < 64 * MB                       # the stall reached the client


def test_client_body_failure_propagates_to_the_pipeline():
    class ClientGone(Exception):
        pass

    async def scenario():
        async with Origin(describe) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            body = RequestBody(100)
            body.feed(b"partial")
            body.fail(ClientGone())
            with pytest.raises(ClientGone):
                await backend.handle(make_request("POST", body=body))
            idle = len(backend.pool)
            await backend.aclose()
            return idle

    assert run(scenario()) == 0


def test_backend_dying_mid_body_raises_backend_error():
    async def truncated(request: OriginRequest):
        await request.digest()

        async def body():
            yield b"x" * 1000
            raise Drop()
        return 200, [(b"content-length", b"1000000")], body()

    async def scenario():
        async with Origin(truncated) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            response = await backend.handle(make_request())
            received = 0
            with pytest.raises(BackendError):
                async for chunk in response.body:
                    received += len(chunk)
            idle = len(backend.pool)
            await backend.aclose()
            return response, received, idle

    response, received, idle = run(scenario())
    assert response.status == 200 and response.content_length == 1_000_000
    assert received == 1000
    assert idle == 0


def test_aborted_response_does_not_return_the_connection_to_the_pool():
    async def big(request: OriginRequest):
        await request.digest()

        async def body():
            for _ in range(64):
                yield CHUNK
        return 200, [(b"content-length", str(64 * len(CHUNK)).encode())], body()

    async def scenario():
        async with Origin(big) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            response = await backend.handle(make_request())
            stream = response.body
            first = await stream.__anext__()
            await stream.aclose()
            idle_after_abort = len(backend.pool)
            # An unstarted body closed at once must release its connection too.
            unstarted = await backend.handle(make_request())
            await unstarted.body.aclose()
            # The next request needs a new connection: the aborted one was discarded.
            again = await backend.handle(make_request())
            size = len(await read_body(again))
            idle_after_full_read = len(backend.pool)
            await backend.aclose()
            return origin, first, idle_after_abort, size, idle_after_full_read

    origin, first, idle_after_abort, size, idle_after_full_read = run(scenario())
    assert len(first) > 0
    assert idle_after_abort == 0
    assert origin.connections == 3
    assert size == 64 * len(CHUNK)
    assert idle_after_full_read == 1


def test_stale_pooled_connection_is_retried_once_for_idempotent_requests():
    async def drops_second_request(request: OriginRequest):
        """Answers the first request on a connection, hangs up on the second (a race with
        the origin's own keep-alive timeout)."""
        await request.digest()
        if request.sequence > 1:
            raise Drop()
        return 200, [(b"content-length", b"2")], b"ok"

    async def scenario():
        async with Origin(drops_second_request) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            first = await backend.handle(make_request("GET"))
            await read_body(first)
            retried = await backend.handle(make_request("GET"))
            retried_body = await read_body(retried)
            # A POST with a body cannot be replayed: the stale connection is a 502.
            post = await backend.handle(make_request("POST", body=fixed_body(b"data")))
            await backend.aclose()
            return origin.connections, retried, retried_body, post

    connections, retried, retried_body, post = run(scenario())
    assert retried.status == 200 and retried_body == b"ok"
    assert post.status == 502
    assert connections == 2


def test_pool_drops_connections_closed_by_the_origin_and_idle_ones():
    async def closes(request: OriginRequest):
        await request.digest()
        return 200, [(b"content-length", b"2"), (b"connection", b"close")], b"ok"

    async def scenario():
        async with Origin(closes) as origin:
            backend = HttpBackend(origin.url, timeout=5)
            await read_body(await backend.handle(make_request()))
            closed_idle = len(backend.pool)
        async with Origin(describe) as origin:
            backend = HttpBackend(origin.url, timeout=5, idle_timeout=0.2)
            await read_body(await backend.handle(make_request()))
            before = len(backend.pool)
            await asyncio.sleep(0.4)
            after = len(backend.pool)
            await backend.aclose()
        return closed_idle, before, after

    assert run(scenario()) == (0, 1, 0)


# -- HttpBackend: streaming in bounded memory -----------------------------------------------

def traced_peak(scenario: Callable[[], Awaitable[object]]) -> tuple[object, int]:
    """Run ``scenario`` and return its result and the peak of traced Python memory above
    the level at its start (the origin server in the same process counts too)."""
    async def measured():
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            result = await scenario()
            return result, tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
    return run(measured())


def test_10mb_upload_streams_in_bounded_memory():
    total = 10 * MB

    async def slow_reader(request: OriginRequest):
        # Reads slower than the client writes: without backpressure the gateway's socket
        # buffer would hold most of the 10 MB.
        count, sha = await request.digest(delay=0.001)
        data = json.dumps({"body_bytes": count, "body_sha256": sha}).encode()
        return 200, [(b"content-length", str(len(data)).encode())], data

    async def scenario():
        async with Origin(slow_reader) as origin:
            backend = HttpBackend(origin.url, timeout=10)
            body, produce = streamed_body(total)
            producer = asyncio.create_task(produce())
            response = await backend.handle(make_request("POST", "/upload", body=body))
            payload = await read_json(response)
            await producer
            await backend.aclose()
            return payload

    payload, peak = traced_peak(scenario)
    assert payload == {"body_bytes": total, "body_sha256": expected_digest(total)}
    assert peak < 2 * MB, f"peak {peak / MB:.1f} MB while uploading 10 MB"


def test_10mb_download_streams_in_bounded_memory():
    total = 10 * MB

    async def big(request: OriginRequest):
        await request.digest()

        async def body():
            for _ in range(total // len(CHUNK)):
                yield CHUNK
        return 200, [(b"content-length", str(total).encode())], body()

    async def scenario():
        async with Origin(big) as origin:
            backend = HttpBackend(origin.url, timeout=10)
            response = await backend.handle(make_request("GET", "/download"))
            digest, count = hashlib.sha256(), 0
            async for chunk in response.body:
                digest.update(chunk)
                count += len(chunk)
                await asyncio.sleep(0.001)    # a slow client: the origin must be paused
            idle = len(backend.pool)
            await backend.aclose()
            return response.content_length, count, digest.hexdigest(), idle

    (length, count, sha, idle), peak = traced_peak(scenario)
    assert length == count == total
    assert sha == expected_digest(total)
    assert idle == 1
    assert peak < 2 * MB, f"peak {peak / MB:.1f} MB while downloading 10 MB"


def test_memory_check_would_catch_whole_body_buffering():
    """The bound above is meaningful: holding a 10 MB body at once shows up in the peak."""
    async def buffering():
        parts = [bytes(CHUNK) for _ in range(10 * MB // len(CHUNK))]
        return len(b"".join(parts))

    size, peak = traced_peak(buffering)
    assert size == 10 * MB and peak > 10 * MB


# -- EchoBackend ----------------------------------------------------------------------------

def self_signed_certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "client.contoso.com")])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0x8F01)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


def test_echo_describes_request_and_hashes_the_body():
    async def scenario():
        body, produce = streamed_body(1 * MB + 123)
        producer = asyncio.create_task(produce())
        request = make_request("POST", "/echo/x", "a=1", headers=[
            (b"content-type", b"text/plain"), (b"x-multi", b"1"), (b"x-multi", b"2")],
            body=body)
        request.http_version = "2"
        response = await EchoBackend().handle(request)
        await producer
        return response

    response = run(scenario())
    assert response.status == 200
    assert (b"content-type", b"application/json") in response.headers
    payload = json.loads(response.body)
    assert payload["method"] == "POST"
    assert payload["path"] == "/echo/x" and payload["query"] == "a=1"
    assert payload["headers"]["content-type"] == "text/plain"
    assert payload["headers"]["x-multi"] == ["1", "2"]
    assert payload["body_bytes"] == 1 * MB + 123
    assert payload["body_sha256"] == expected_digest(1 * MB + 123)
    assert payload["http_version"] == "2"
    assert payload["client_certificate"] is None


def test_echo_reports_the_client_certificate():
    certificate = self_signed_certificate()

    async def scenario():
        request = make_request()
        request.connection.handshake_certificate = certificate
        return json.loads((await EchoBackend().handle(request)).body)

    described = run(scenario())["client_certificate"]
    assert described["subject"] == "CN=client.contoso.com, O=Contoso, C=US"
    assert described["thumbprint"] == certificate.fingerprint(hashes.SHA1()).hex().upper()
    assert described["serial"] == "008F01"      # DER keeps the sign byte, as .NET shows


def test_echo_remembers_a_connections_part_but_not_past_a_change():
    """The connection's part of the JSON is encoded once for what it describes: another
    connection with the same certificate and TLS parameters shares it; a late certificate
    (another object, another origin) shows at once, and so does any other TLS parameter;
    the text is json.dumps of the whole summary, key order included."""
    first, late = self_signed_certificate(), self_signed_certificate()

    def on_new_connection(certificate, **tls) -> Request:
        request = make_request()
        request.connection.handshake_certificate = certificate
        request.certificate_origin = "handshake"
        for name, value in {"tls_version": "TLSv1.3", "sni": "gw.example", "alpn": "http/1.1",
                            "cipher": "TLS_AES_256_GCM_SHA384", **tls}.items():
            setattr(request.connection, name, value)
        return request

    async def scenario():
        backend = EchoBackend()
        request = on_new_connection(first)
        bodies = [(await backend.handle(request)).body]
        again = make_request()
        again.connection = request.connection
        again.certificate_origin = "handshake"
        bodies.append((await backend.handle(again)).body)
        bodies.append((await backend.handle(on_new_connection(first))).body)
        request.connection.handshake_certificate = None
        request.connection.late_certificate = late
        again.certificate_origin = "renegotiation"
        bodies.append((await backend.handle(again)).body)
        changed = [on_new_connection(first, **{name: value}) for name, value in (
            ("tls_version", "TLSv1.2"), ("sni", "other.example"), ("alpn", "h2"),
            ("cipher", "TLS_CHACHA20_POLY1305_SHA256"), ("session_resumed", True))]
        changed.append(on_new_connection(late))
        changed.append(on_new_connection(None))
        changed.append(on_new_connection(first))
        changed[-1].certificate_origin = "post_handshake"     # same certificate, other way
        return bodies, [json.loads((await backend.handle(r)).body) for r in changed], changed

    (one, two, three, four), described_changes, changed = run(scenario())
    assert one == two == three
    assert list(json.loads(one)) == ["method", "path", "query", "headers", "body_bytes",
                                     "body_sha256", "http_version", "client_certificate",
                                     "certificate_origin", "tls"]
    assert json.dumps(json.loads(four)).encode() == four
    described = json.loads(four)
    assert described["certificate_origin"] == "renegotiation"
    assert described["client_certificate"]["thumbprint"] == \
        late.fingerprint(hashes.SHA1()).hex().upper()
    for payload, request in zip(described_changes, changed, strict=True):
        info = request.connection
        assert payload["tls"] == {"version": info.tls_version, "sni": info.sni,
                                  "alpn": info.alpn, "cipher": info.cipher,
                                  "session_resumed": info.session_resumed}
        assert payload["certificate_origin"] == request.certificate_origin
        expected = info.handshake_certificate
        assert (payload["client_certificate"] or {}).get("thumbprint") == (
            None if expected is None else expected.fingerprint(hashes.SHA1()).hex().upper())


@pytest.mark.parametrize("method, path, query, headers, version", [
    ("GET", "/echo", "", [(b"host", b"h"), (b"user-agent", b"curl/8")], "1.1"),
    ("GET", "/caf%C3%A9/\u00e9", "q=\"x\"&r=\\", [(b"host", b"h")], "2"),
    ("DELETE", "/", "", [(b"x-a", b"1"), (b"x-a", b"2"), (b"X-A", b"3")], "1.1"),
    ("GET", "/", "", [(b"x-latin", b"caf\xe9 \x7f\x01"), (b"x-quote", b'"\\')], "1.1"),
    ("GET", "/", "", [], "1.1"),
], ids=["usual", "escapes", "repeated", "latin-1", "no-headers"])
def test_echo_text_is_json_dumps_of_the_summary(method, path, query, headers, version):
    """The echo writes its JSON out piece by piece (header members remembered): the bytes
    must be exactly json.dumps of the summary, key order and escapes included."""
    from tlsgate.backends import echo

    async def scenario():
        backend = EchoBackend()
        answers = []
        for _ in range(2):                     # the second time from remembered members
            request = make_request(method, path, query, headers)
            request.http_version = version
            answers.append((await backend.handle(request)).body)
        return request, answers

    request, (first, second) = run(scenario())
    summary = {"method": method, "path": path, "query": query,
               "headers": echo.headers_to_json(headers), "body_bytes": 0,
               "body_sha256": echo._EMPTY_SHA256, "http_version": version,
               **echo._describe_connection(request)}
    assert first == second == json.dumps(summary).encode()


def test_echo_status_and_sized_download():
    async def scenario():
        backend = EchoBackend()
        teapot = await backend.handle(make_request(query="status=418"))
        download = await backend.handle(make_request(query="size=200000&status=201"))
        data = await read_body(download)
        bad = await backend.handle(make_request(query="status=42"))
        superscript = await backend.handle(make_request(query="status=%C2%B2"))   # "²"
        return teapot, download, data, bad, superscript

    teapot, download, data, bad, superscript = run(scenario())
    assert superscript.status == 400
    assert "status must be an integer" in json.loads(superscript.body)["message"]
    assert teapot.status == 418 and json.loads(teapot.body)["method"] == "GET"
    assert download.status == 201
    assert download.content_length == 200000
    assert data == (CHUNK * 4)[:200000]
    summary = json.loads(dict(download.headers)[b"x-echo"])
    assert summary["query"] == "size=200000&status=201"
    assert bad.status == 400


# -- factory --------------------------------------------------------------------------------

def test_make_backend_and_close_all():
    async def scenario():
        async with Origin(describe) as origin:
            echo = make_backend(ApiSettings(name="echo", path="/echo", backend="echo:"))
            http = make_backend(ApiSettings(name="api", path="/api", backend=origin.url + "/v1",
                                            timeout=3))
            payload = await read_json(await http.handle(make_request(path="/things")))
            idle = len(http.pool)
            await close_all()
            return echo, http, payload, idle, len(http.pool)

    echo, http, payload, idle, idle_after_close = run(scenario())
    assert isinstance(echo, EchoBackend)
    assert isinstance(http, HttpBackend) and http.timeout == 3
    assert payload["target"] == "/v1/things"
    assert (idle, idle_after_close) == (1, 0)
    with pytest.raises(ValueError):
        make_backend(ApiSettings(name="x", path="/x", backend="ftp://example.com"))


def test_echo_json_is_byte_identical_to_json_dumps():
    from tlsgate.backends import echo
    samples = [{}, {"headers": {"x": ["a", "b"], "é": "\x00\n\"q\""}, "n": 3, "none": None,
                    "ok": True, "big": 10**20}]
    for sample in samples:
        assert echo._dumps(sample) == json.dumps(sample)
    with pytest.raises(TypeError):
        echo._dumps({"x": object()})


def test_a_body_is_exhausted_only_when_done_unfailed_and_fully_read():
    """The echo skips reading an exhausted body; anything else must still be read."""
    body = RequestBody(None)
    assert not body.exhausted                   # more may come
    body.feed(b"data")
    body.finish()
    assert not body.exhausted                   # done, but unread bytes wait
    assert asyncio.run(body.read_chunk()) == b"data"
    assert body.exhausted
    assert RequestBody.empty().exhausted
    failed = RequestBody(None)
    failed.finish()
    failed.fail(BodyTooLarge(1))
    assert not failed.exhausted                 # reading it must raise


# -- HttpBackend: responses no client should get as they are ---------------------------------

async def raw_origin(answer: bytes):
    """An origin that reads one request head and answers ``answer`` byte for byte, then
    closes: for what an h11-based origin would refuse to send."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_length_and_chunked_together_frame_by_chunks_and_drop_the_length():
    # RFC 9112 §6.3: Transfer-Encoding wins, and an intermediary removes Content-Length
    # (before: the client was promised 100 bytes and got 5).
    async def scenario():
        server, url = await raw_origin(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n")
        async with server:
            response = await HttpBackend(url, timeout=5).handle(make_request())
            return response, await read_body(response)

    response, data = run(scenario())
    assert response.status == 200 and data == b"hello"
    assert response.content_length is None
    assert not any(name == b"content-length" for name, _ in response.headers)


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb"])
def test_a_control_character_in_a_backend_header_is_502(value, caplog):
    async def scenario():
        server, url = await raw_origin(b"HTTP/1.1 200 OK\r\nX-Ctl: " + value +
                                       b"\r\nContent-Length: 2\r\n\r\nok")
        async with server:
            return await HttpBackend(url, timeout=5).handle(make_request())

    response = run(scenario())
    assert response.status == 502
    assert json.loads(response.body)["reason"] == "BackendProtocolError"
    assert "'x-ctl'" in caplog.text and value.decode("latin-1") not in caplog.text


def test_a_status_past_599_from_the_backend_is_502(caplog):
    async def scenario():
        server, url = await raw_origin(b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok")
        async with server:
            return await HttpBackend(url, timeout=5).handle(make_request())

    response = run(scenario())
    assert response.status == 502
    assert json.loads(response.body)["reason"] == "BackendProtocolError"
    assert "status 600" in caplog.text
