"""The HTTP/1.1 direct path (tlsgate/http/h1.py): plain requests served without h11.

A plain request that arrives whole in one read is parsed by ``parse_plain_request`` and its
response framed by ``DirectResponseSink``; everything else goes through h11. The two must be
indistinguishable on the wire: the same request sent whole (direct) and in two pieces (h11)
gets byte-identical answers here, over real TLS.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from types import SimpleNamespace

import h11
import pytest
from conftest import BASIC_CONFIG
from httpclients import pattern_sha256, read_until_closed, sha256, tls_socket
from policy_support import policy_gateway

from tlsgate.config.model import HostnameSettings
from tlsgate.http.base import SERVER_HEADER, HTTPLimits
from tlsgate.http.h1 import (
    DirectResponseSink,
    H1Connection,
    ResponseFramingError,
    parse_plain_request,
)
from tlsgate.http.messages import ClientGone, ConnectionInfo

pytestmark = pytest.mark.usefixtures("no_tracebacks")

LIMIT = 16384


# -- the parser, without sockets ---------------------------------------------------------------

def test_plain_get_is_parsed_with_names_lowercased_and_values_trimmed():
    plain = parse_plain_request(
        b"GET /echo?x=1 HTTP/1.1\r\nHost: localhost\r\nX-Thing:  a b \t\r\n\r\n", LIMIT)
    assert plain is not None
    assert (plain.method, plain.target, plain.body, plain.close) == \
        (b"GET", b"/echo?x=1", b"", False)
    assert plain.headers == [(b"host", b"localhost"), (b"x-thing", b"a b")]


def test_plain_post_may_bring_only_the_start_of_its_body():
    plain = parse_plain_request(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\nfirst bytes", LIMIT)
    assert plain is not None and plain.body == b"first bytes" and plain.length == 1000000


def test_plain_post_carries_its_whole_body_and_connection_close():
    plain = parse_plain_request(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Connection: keep-alive, Close\r\n\r\nhello", LIMIT)
    assert plain is not None and plain.body == b"hello" and plain.close


def test_connection_close_is_a_token_not_a_substring():
    plain = parse_plain_request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", LIMIT)
    assert plain is not None and not plain.close


def test_head_size_is_measured_as_the_h11_path_measures_it():
    """name + value + 4 per field (the h11 path's 431 rule), not raw bytes: ``a:b`` lines
    are 5 raw bytes but count 6, so this head is within the limit raw, over it counted."""
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"a:b\r\n" * 3000 + b"\r\n"
    assert len(head) < 16384 < 3000 * 6
    assert parse_plain_request(head, 16384) is None


@pytest.mark.parametrize("raw", [
    b"GET /echo HTTP/1.1\r\nHost: h\r\n",                                   # head in pieces
    b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",  # pipelined
    b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nhello",    # more than the body
    b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    b"GET /echo HTTP/1.0\r\n\r\n",                                          # HTTP/1.0
    b"GET /echo HTTP/1.1\r\n\r\n",                                          # no Host
    b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                    # two Hosts
    b"GET /echo HTTP/1.1\r\nHost: h\r\nX: a\r\n  folded\r\n\r\n",           # obs-fold
    b"GET /echo HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n",                      # space before colon
    b"GET /echo HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9\r\n\r\n",             # obs-text
    b"GET  /echo HTTP/1.1\r\nHost: h\r\n\r\n",                              # double space
    b"GET /echo HTTP/1.1\nHost: h\n\n",                                     # bare LF
    b"GET /" + b"a" * LIMIT + b" HTTP/1.1\r\nHost: h\r\n\r\n",              # over the limit
], ids=lambda raw: raw[:40].decode("latin-1"))
def test_anything_not_plain_is_left_to_h11(raw):
    assert parse_plain_request(raw, LIMIT) is None


# -- the response head, without sockets: h11's bytes ------------------------------------------

class RecordingChannel:
    """The PlaintextChannel seen by the adapter, recording what it is asked to do (the
    adapter is sans-IO: the asyncio connection is tested over real sockets below)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False
        self.closed = False
        self.spawned = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    async def drain(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def spawn(self, coro) -> None:
        self.spawned.append(coro)

    def request_started(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    async def client_certificate(self, request):
        return None


def h11_head_and_body(method: bytes, close: bool, status: int, headers, reason: bytes,
                      chunks) -> tuple[bytes, bool]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"%s / HTTP/1.1\r\nHost: a\r\n%s\r\n" % (
        method, b"Connection: close\r\n" if close else b""))
    conn.next_event()
    conn.next_event()
    out = conn.send(h11.Response(status_code=status, headers=[SERVER_HEADER, *headers],
                                 reason=reason))
    for chunk in chunks:
        out += conn.send(h11.Data(data=chunk))
    out += conn.send(h11.EndOfMessage())
    return out, conn.our_state is h11.MUST_CLOSE


def direct_head_and_body(method: bytes, close: bool, status: int, headers, reason: bytes,
                         chunks) -> tuple[bytes, bool]:
    channel = RecordingChannel()
    closes = []
    conn = SimpleNamespace(_closed=False, _channel=channel, _direct_complete=closes.append)
    sink = DirectResponseSink(conn, close)
    sink.request = SimpleNamespace(method=method.decode(), body=SimpleNamespace(complete=True))

    async def respond():
        await sink.start(status, headers, reason=reason)
        for chunk in chunks:
            await sink.write(chunk)
        await sink.end()
    asyncio.run(respond())
    return b"".join(channel.written), closes == [True]


HEADER_SETS = [
    [],
    [(b"content-type", b"text/plain"), (b"Content-Length", b"5")],
    [(b"Transfer-Encoding", b"Chunked")],
    [(b"Connection", b"keep-alive, Foo")],
    [(b"connection", b"close")],
    [(b"X-Name", "résumé".encode()), (b"x-ctl", b"a\x01b"), (b"x-empty", b"")],
    [(b"x-a", b"1"), (b"Host", b"h"), (b"content-length", b"5")],
    # the usual response: remembered lines, a lowercase content-length (the fast path)
    [(b"content-type", b"text/plain"), (b"content-length", b"5")],
]


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "close"])
@pytest.mark.parametrize("status", [200, 204, 304, 404, 599])
@pytest.mark.parametrize("headers", HEADER_SETS, ids=range(len(HEADER_SETS)))
def test_direct_response_bytes_are_h11s(method, close, status, headers):
    body = [] if method == b"HEAD" or status in (204, 304) else [b"he", b"llo"]
    for reason in (b"", "Zugriff verweigert – ungültig".encode()):
        expected = h11_head_and_body(method, close, status, headers, reason, body)
        # twice: the second time from the lines the first one remembered
        assert direct_head_and_body(method, close, status, headers, reason, body) == expected
        assert direct_head_and_body(method, close, status, headers, reason, body) == expected


@pytest.mark.parametrize("status, headers, reason", [
    (200, [(b"x-a", b"1\r\nx-injected: 1")], b"OK"),
    (200, [(b"bad name", b"1")], b"OK"),
    (200, [(b"transfer-encoding", b"gzip, chunked")], b"OK"),
    (200, [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], b"OK"),
    (200, [], b"OK\r\nx-injected: 1"),
    (101, [], b"Switching Protocols"),
])
def test_direct_response_refuses_what_would_corrupt_the_stream(status, headers, reason):
    with pytest.raises(ResponseFramingError):
        direct_head_and_body(b"GET", False, status, headers, reason, [])


def test_a_second_head_or_data_after_the_end_is_refused():
    channel = RecordingChannel()
    conn = SimpleNamespace(_closed=False, _channel=channel, _direct_complete=lambda close: None)
    sink = DirectResponseSink(conn, False)
    sink.request = SimpleNamespace(method="GET", body=SimpleNamespace(complete=True))

    async def misuse():
        await sink.start(200, [(b"content-length", b"2")])
        with pytest.raises(ResponseFramingError):
            await sink.start(200, [])
        await sink.write(b"ok")
        await sink.end()
        with pytest.raises(ResponseFramingError):
            await sink.write(b"late")
    asyncio.run(misuse())
    assert b"".join(channel.written).endswith(b"\r\n\r\nok")


def test_stall_read_ahead_applies_to_a_body_that_came_with_its_head():
    """stall mode lowers the body's read-ahead before the body is fed: a 2,000-byte body
    past a 1,000-byte read-ahead stops reading, as on the h11 path."""
    channel = RecordingChannel()
    info = ConnectionInfo(("127.0.0.1", 1), host_settings=HostnameSettings(
        name="late", certificate="c", on_demand_body="stall", upload_read_ahead=1000))

    async def handler(request, sink):
        pass
    conn = H1Connection(channel, info, handler, HTTPLimits())
    raw = request("POST", "/echo", body=b"b" * 2000)
    assert parse_plain_request(raw, LIMIT) is not None
    conn.receive_data(raw)
    assert channel.paused
    for coro in channel.spawned:
        coro.close()
    conn.connection_lost()


def test_eof_in_the_middle_of_a_direct_body_closes_without_an_answer():
    """As on the h11 path: the request can never complete, nothing is written, the
    connection closes (instead of waiting for an idle timeout)."""
    channel = RecordingChannel()
    bodies = []

    async def handler(request, sink):
        pass
    conn = H1Connection(channel, ConnectionInfo(("127.0.0.1", 1)), handler,
                        HTTPLimits())
    conn.receive_data(request("POST", "/echo", body=b"x" * 1000)[:-500])
    bodies.append(conn._body)
    conn.receive_eof()
    for coro in channel.spawned:
        coro.close()
    conn.connection_lost()
    assert channel.closed and channel.written == []

    async def read_all(body):
        while await body.read_chunk():
            pass
    with pytest.raises(ClientGone):         # a handler reading the body learns it is cut
        asyncio.run(read_all(bodies[0]))


# -- direct and h11 answer byte for byte alike ----------------------------------------------

PROXY_CONFIG = BASIC_CONFIG + """
[[api]]
name = "proxy"
path = "/proxy"
backend = "http://127.0.0.1:ORIGIN_PORT/base"
"""


@pytest.fixture
def proxy_gateway(start_gateway, origin):
    return start_gateway(PROXY_CONFIG.replace("ORIGIN_PORT", str(origin.port)))


def exchange(sock, request: bytes, *, pieces: int) -> bytes:
    """Send ``request`` whole (one TLS record) or split in two reads; the raw response."""
    if pieces == 1:
        sock.sendall(request)
    else:
        cut = request.index(b"\r\n") + 2            # mid-head: h11 gets a partial head first
        sock.sendall(request[:cut])
        time.sleep(0.05)
        sock.sendall(request[cut:])
    reader = h11.Connection(h11.CLIENT)
    method = request.split(b" ", 1)[0]
    reader.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    reader.send(h11.EndOfMessage())
    raw = bytearray()
    while True:
        event = reader.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            raw += data
            reader.receive_data(data)
        elif type(event) in (h11.EndOfMessage, h11.ConnectionClosed):
            return bytes(raw)


def request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CASES = {
    "get": request("GET", "/echo?a=1", "Accept: */*", "X-Spaces:   padded   "),
    "head": request("HEAD", "/echo?size=1000"),
    "post": request("POST", "/echo", "Content-Type: text/plain", body=b"hello body"),
    "not found": request("GET", "/nowhere"),
    "no content": request("GET", "/echo?status=204"),
    "streamed": request("GET", "/echo?size=200000"),
    "bad query": request("GET", "/echo?status=abc"),
    "absolute form": request("GET", "https://localhost/echo?abs"),
    # head + the start of the body in the first read, the rest streamed after it
    "large body": request("POST", "/echo?large", body=bytes(range(256)) * 2000),
    "error before the body's end": request("POST", "/nowhere", body=b"n" * 300000),
}


@pytest.mark.parametrize("name", list(CASES))
def test_direct_and_h11_answers_are_byte_identical(gateway, pki, name):
    raw = CASES[name]
    assert parse_plain_request(raw[:16384], LIMIT) is not None    # whole: the direct path

    def answer(pieces: int) -> bytes:
        sock = tls_socket(gateway.port, pki)
        try:
            return exchange(sock, raw, pieces=pieces)
        finally:
            sock.close()
    direct, via_h11 = answer(1), answer(2)
    assert direct.startswith(b"HTTP/1.1 ")
    assert direct == via_h11


def test_large_body_streams_on_the_direct_path_and_the_connection_goes_on(gateway, pki):
    body = os.urandom(3_000_000)
    raw = request("POST", "/echo?big", body=body)
    assert parse_plain_request(raw[:16384], LIMIT) is not None     # the first record
    sock = tls_socket(gateway.port, pki)
    responses = Responses(sock)
    sock.sendall(raw)
    first = json.loads(h11_body(responses.next()))
    sock.sendall(request("GET", "/echo?after"))
    after = json.loads(h11_body(responses.next()))
    sock.close()
    assert (first["body_bytes"], first["body_sha256"]) == (len(body), sha256(body))
    assert after["query"] == "after"


EARLY_ANSWER_POLICY = """<policies><inbound><base />
  <return-response><set-status code="200" reason="OK" /><set-body>early</set-body></return-response>
</inbound><backend><base /></backend><outbound><base /></outbound><on-error><base /></on-error>
</policies>"""


def test_early_answer_drops_the_body_rest_and_keeps_the_connection(tmp_path, pki):
    """A policy answers without reading the body: the rest is read and dropped, and the
    next request on the connection is served (as on the h11 path)."""
    with policy_gateway(tmp_path, pki, {"early": EARLY_ANSWER_POLICY}) as gateway:
        sock = tls_socket(gateway.port, pki)
        responses = Responses(sock)
        sock.sendall(request("POST", "/early", body=b"e" * 1_000_000))
        early = responses.next()
        sock.sendall(request("GET", "/early?again"))
        again = responses.next()
        sock.close()
    assert early.startswith(b"HTTP/1.1 200 OK\r\n") and h11_body(early) == b"early"
    assert b"connection: close" not in early.lower()
    assert h11_body(again) == b"early"


def test_client_leaving_mid_body_leaves_the_gateway_healthy(gateway, pki, access_log):
    sock = tls_socket(gateway.port, pki)
    sock.sendall(request("POST", "/echo?cut", body=b"c" * 200000)[:100000])
    sock.close()
    log = access_log(1)
    assert log[0]["path"] == "/echo" and log[0]["status"] in (499, 400)
    sock = tls_socket(gateway.port, pki)        # still serving
    sock.sendall(request("GET", "/echo?next"))
    assert json.loads(h11_body(Responses(sock).next()))["query"] == "next"
    sock.close()


def test_chunked_response_from_the_backend_is_byte_identical(proxy_gateway, pki):
    """A streamed answer of unknown length goes out chunked, on both paths alike."""
    raw = request("GET", "/proxy/x?size=300000&chunked=1")
    sock = tls_socket(proxy_gateway.port, pki)
    direct = exchange(sock, raw, pieces=1)
    via_h11 = exchange(sock, raw, pieces=2)
    sock.close()
    head = direct.partition(b"\r\n\r\n")[0]
    assert head.endswith(b"\r\nTransfer-Encoding: chunked")
    # chunk sizes follow the origin's reads; the head and the decoded body must not differ
    assert head == via_h11.partition(b"\r\n\r\n")[0]
    assert sha256(h11_body(direct)) == sha256(h11_body(via_h11)) == pattern_sha256(300000)


def test_connection_close_gets_connection_close_and_a_closed_socket(gateway, pki):
    sock = tls_socket(gateway.port, pki)
    sock.sendall(request("GET", "/echo", "Connection: close"))
    raw = read_until_closed(sock)
    sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\nConnection: close")
    assert json.loads(body)["method"] == "GET"


def test_one_connection_alternates_between_the_paths(gateway, pki):
    """Direct, chunked upload (h11), direct, pipelined pair (h11), direct: all in order."""
    sock = tls_socket(gateway.port, pki)
    responses = Responses(sock)
    queries = []

    def ask(data: bytes, count: int = 1) -> None:
        sock.sendall(data)
        for _ in range(count):
            queries.append(json.loads(h11_body(responses.next()))["query"])

    ask(request("GET", "/echo?1"))
    ask(b"POST /echo?2 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n")
    ask(request("GET", "/echo?3"))
    ask(request("GET", "/echo?4") + request("POST", "/echo?5", body=b"x" * 100), count=2)
    ask(request("POST", "/echo?6", body=b"y" * 3000))
    sock.close()
    assert queries == ["1", "2", "3", "4", "5", "6"]


def test_request_pipelined_behind_a_direct_one_waits_its_turn(gateway, pki):
    """A second request arriving while the first (direct) is answered is held, not run
    alongside: the answers come in order and each is whole."""
    sock = tls_socket(gateway.port, pki)
    sock.sendall(request("GET", "/echo?size=3000000"))   # a long answer to stream
    sock.sendall(request("POST", "/echo?second", body=b"z" * 10))
    responses = Responses(sock)
    first = responses.next()
    second = responses.next()
    sock.close()
    assert len(h11_body(first)) == 3000000
    assert json.loads(h11_body(second))["body_sha256"] == sha256(b"z" * 10)


# -- helpers ---------------------------------------------------------------------------------

class Responses:
    """Raw responses read one by one from a socket (bytes of the next one are kept)."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.spare = b""

    def next(self) -> bytes:
        reader = h11.Connection(h11.CLIENT)
        reader.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
        reader.send(h11.EndOfMessage())
        raw = bytearray(self.spare)
        if self.spare:                  # (receive_data(b"") would mean EOF)
            reader.receive_data(self.spare)
        while True:
            event = reader.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(65536)
                raw += data
                reader.receive_data(data)
            elif type(event) is h11.EndOfMessage:
                self.spare = reader.trailing_data[0]
                return bytes(raw[:len(raw) - len(self.spare)])


def h11_body(raw: bytes) -> bytes:
    reader = h11.Connection(h11.CLIENT)
    reader.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
    reader.send(h11.EndOfMessage())
    reader.receive_data(raw)
    body = bytearray()
    while type(event := reader.next_event()) is not h11.EndOfMessage:
        if type(event) is h11.Data:
            body += event.data
    return bytes(body)
