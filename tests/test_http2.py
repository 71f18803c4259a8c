"""HTTP/2 end to end: curl --http2 and the ``h2`` library as a client over a Python ssl socket.

Multiplexing, flow control both ways, the concurrent-stream limit (extra streams refused with
REFUSED_STREAM while the others are served), client resets, header-list and frame-size limits,
protocol errors (GOAWAY). Malformed header blocks: tests/test_http2_fields.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import time

import h2.config
import h2.connection
import h2.errors
import h2.exceptions
import h2.settings
import pytest
from conftest import BASIC_CONFIG
from httpclients import (
    H2Client,
    H2Stream,
    curl,
    pattern_sha256,
    read_until_closed,
    sha256,
    tls_socket,
    tlsgate_errors,
)
from policy_support import policy_gateway
from policy_support import request as policy_request

from tlsgate.http.base import DISCARD_LIMIT, HTTPLimits
from tlsgate.http.h2 import H2Connection
from tlsgate.http.messages import ConnectionInfo

STREAMS_CONFIG = BASIC_CONFIG.replace(
    "handshake_timeout = 5", "handshake_timeout = 5\nhttp2_max_concurrent_streams = 5")
LIMITS_CONFIG = BASIC_CONFIG.replace(
    "handshake_timeout = 5",
    "handshake_timeout = 5\nmax_header_size = 4096\nmax_body_size = 100000")


pytestmark = pytest.mark.usefixtures("no_tracebacks")


# -- curl ----------------------------------------------------------------------------------------

def test_curl_http2_get_and_post(gateway, pki, tmp_path, thumbprints, access_log):
    result = curl(gateway.port, pki, "--http2", path="/echo/x?y=1")
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["http_version"] == "2" and echo["tls"]["alpn"] == "h2"
    assert echo["path"] == "/echo/x" and echo["query"] == "y=1"
    data = os.urandom(500_000)
    (tmp_path / "body").write_bytes(data)
    result = curl(gateway.port, pki, "--http2", "--data-binary", f"@{tmp_path / 'body'}")
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["body_bytes"] == len(data) and echo["body_sha256"] == sha256(data)
    for entry in access_log(2):
        assert entry["http_version"] == "2" and entry["status"] == 200
        assert entry["certificate_origin"] == "handshake"
        assert entry["thumbprint"] == thumbprints["client.pem"]["thumbprint"]


def test_nghttp_streams_and_an_upload(gateway, pki, tmp_path):
    """nghttp (nghttp2's own client) opens its connection with PRIORITY frames on idle
    streams and runs five streams at once; then an upload that needs WINDOW_UPDATEs."""
    exe = shutil.which("nghttp")
    assert exe, "nghttp is not installed: `make test` installs it (make sysdeps)"
    tls = ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    url = f"https://localhost:{gateway.port}/echo"
    result = subprocess.run([exe, *tls, "-m", "5", url], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    answers = json.loads("[" + result.stdout.replace("}{", "},{") + "]")
    assert [a["http_version"] for a in answers] == ["2"] * 5
    data = os.urandom(3_000_000)
    (tmp_path / "body").write_bytes(data)
    result = subprocess.run([exe, *tls, "-d", str(tmp_path / "body"), url],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["body_bytes"] == len(data) and echo["body_sha256"] == sha256(data)


def test_curl_http2_download_and_head(gateway, pki):
    result = curl(gateway.port, pki, "--http2", "-D", "-", "-o", "/dev/null",
                  path="/echo?size=2000000")
    headers = result.stdout.decode().lower()
    assert headers.startswith("http/2 200")
    assert "content-length: 2000000" in headers
    result = curl(gateway.port, pki, "--http2", "-I", path="/echo?size=777")
    assert result.returncode == 0, result.stderr
    headers = result.stdout.decode().lower()
    assert "content-length: 777" in headers


# -- the h2 library as a client ------------------------------------------------------------------

def test_twenty_concurrent_streams_on_one_connection(gateway, pki, access_log):
    client = H2Client(gateway.port, pki)
    client.wait_settings()
    bodies = {}
    for i in range(20):
        body = os.urandom(1000 + 5000 * i)
        # Headers and a first part of every body go out before any stream is finished.
        stream_id = client.request("POST", f"/echo?i={i}", body[:500], end_stream=False,
                                   headers=[("content-length", str(len(body)))])
        bodies[stream_id] = body
    for stream_id, body in bodies.items():
        client.send_body(stream_id, body[500:])
    streams = client.wait(*bodies)
    client.close()
    for (stream_id, body), stream in zip(bodies.items(), streams, strict=True):
        assert stream.status == 200
        echo = stream.json()
        assert echo["body_sha256"] == sha256(body), stream_id
        assert echo["query"] == f"i={list(bodies).index(stream_id)}"
    log = access_log(20)
    assert len({entry["client"] for entry in log}) == 1 and len(log) == 20


def test_flow_control_both_ways_with_the_default_client_window(gateway, pki):
    client = H2Client(gateway.port, pki)          # window 65535, acknowledged as data arrives
    client.wait_settings()
    assert client.conn.local_settings.initial_window_size == 65535
    upload = os.urandom(5_000_000)
    stream = client.post("/echo", upload)
    assert stream.status == 200
    assert stream.json()["body_sha256"] == sha256(upload)
    stream = client.get("/echo?size=5000000")
    assert stream.status == 200
    assert len(stream.data) == 5_000_000
    assert hashlib.sha256(stream.data).hexdigest() == pattern_sha256(5_000_000)
    client.close()


def test_download_waits_for_the_clients_window(gateway, pki):
    """The server sends no more than the window the client opened, then waits for it."""
    client = H2Client(gateway.port, pki, auto_ack=False)
    client.wait_settings()
    stream_id = client.request("GET", "/echo?size=300000")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            client.receive_once(timeout=0.2)
        except TimeoutError:
            pass
    stream = client.streams[stream_id]
    assert len(stream.data) == 65535 and not stream.ended
    # open the window: the rest arrives
    acknowledged = 0
    while not stream.ended:
        if len(stream.data) > acknowledged:
            client.conn.acknowledge_received_data(len(stream.data) - acknowledged, stream_id)
            acknowledged = len(stream.data)
            client.flush()
        client.receive_once()
    assert hashlib.sha256(stream.data).hexdigest() == pattern_sha256(300_000)
    client.close()


def test_max_concurrent_streams_is_advertised_and_extra_streams_are_refused(start_gateway, pki):
    gateway = start_gateway(STREAMS_CONFIG)
    client = H2Client(gateway.port, pki)
    # Eight requests with open bodies, sent before the server's SETTINGS arrive (the race the
    # REFUSED_STREAM code exists for): five are taken, three refused, the connection lives.
    ids = [client.request("POST", f"/echo?n={n}", b"part", end_stream=False) for n in range(8)]
    client.wait_settings()
    assert client.conn.remote_settings.max_concurrent_streams == 5
    client.wait(*ids[5:])
    assert [client.streams[s].reset for s in ids[5:]] == [h2.errors.ErrorCodes.REFUSED_STREAM] * 3
    assert not any(client.streams[s].done for s in ids[:5])
    for stream_id in ids[:5]:
        client.send_body(stream_id, b"-end")
    for stream in client.wait(*ids[:5]):
        assert stream.status == 200
        assert stream.json()["body_sha256"] == sha256(b"part-end")
    assert client.goaway is None
    # the refused requests can be retried on the same connection
    again = [client.request("GET", f"/echo?retry={n}") for n in range(5)]
    assert [s.status for s in client.wait(*again)] == [200] * 5
    client.close()


def test_client_reset_mid_upload_keeps_the_connection_usable(gateway, pki, caplog):
    client = H2Client(gateway.port, pki)
    client.wait_settings()
    stream_id = client.request("POST", "/echo", os.urandom(200_000), end_stream=False,
                               headers=[("content-length", "1000000")])
    client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    client.flush()
    body = os.urandom(300_000)
    stream = client.post("/echo", body)
    assert stream.status == 200 and stream.json()["body_sha256"] == sha256(body)
    client.close()
    assert not tlsgate_errors(caplog.records)


def test_unread_request_bodies_do_not_eat_the_connection_window(start_gateway, pki):
    """Bodies the gateway answers without reading (404, 413 by Content-Length) must still be
    credited back to the connection window (16 MB), or the connection stalls for good."""
    gateway = start_gateway(LIMITS_CONFIG)
    client = H2Client(gateway.port, pki)
    client.wait_settings()
    body = os.urandom(60_000)
    for batch in range(80):                 # 80 x 4 x 60 KB = 19 MB: more than the window
        window = client.conn.outbound_flow_control_window
        assert window >= 4 * len(body), f"connection window down to {window} (batch {batch})"
        ids = []
        for i in range(4):
            # Headers and body in one write, so that the gateway has the body before it
            # answers: unread data, which only the gateway can hand back.
            stream_id = client.conn.get_next_available_stream_id()
            path = "/nothing" if i % 2 else "/echo"   # 404, and 413 (over max_body_size)
            client.conn.send_headers(stream_id, [
                (":method", "POST"), (":scheme", "https"), (":authority", "localhost"),
                (":path", path), ("content-length", str(len(body) * 2))])
            for offset in range(0, len(body), 16384):
                client.conn.send_data(stream_id, body[offset:offset + 16384])
            client.streams[stream_id] = H2Stream()
            ids.append(stream_id)
        client.flush()
        for i, stream in enumerate(client.wait(*ids, timeout=5)):
            assert stream.status == (404 if i % 2 else 413), (batch, stream)
    small = client.post("/echo", b"still flowing")
    assert small.status == 200 and small.json()["body_sha256"] == sha256(b"still flowing")
    client.close()


def test_body_over_the_limit_is_413_over_http2(start_gateway, pki):
    gateway = start_gateway(LIMITS_CONFIG)
    client = H2Client(gateway.port, pki)
    client.wait_settings()
    # no content-length: the limit is crossed while streaming
    stream_id = client.request("POST", "/echo", end_stream=False)
    client.send_body(stream_id, b"x" * 300_000)
    (stream,) = client.wait(stream_id)
    assert stream.status == 413
    assert client.post("/echo", b"ok").status == 200
    client.close()


@pytest.mark.parametrize("expect", ["Expect:", "Expect: 100-continue"])
def test_curl_gets_the_413_of_a_body_it_is_still_sending(start_gateway, pki, tmp_path,
                                                         expect):
    # Answered before the body ended: the rest is read and dropped, as on HTTP/1.1. A reset
    # right after the answer (RFC 9113 §8.1 allows it) made curl throw the 413 away:
    # "Stream error in the HTTP/2 framing layer".
    gateway = start_gateway(LIMITS_CONFIG)
    upload = tmp_path / "big.bin"
    upload.write_bytes(b"x" * 3_000_000)
    result = curl(gateway.port, pki, "--http2", "-H", expect, "--data-binary", f"@{upload}",
                  "-w", "\n%{http_code}", path="/echo", timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().rpartition("\n")[2] == "413"


@pytest.mark.parametrize("size, status", [(3900, "200"), (4200, "431")])
def test_max_header_size_answers_alike_on_both_versions(start_gateway, pki, size, status):
    # max_header_size = 4096: the head measured the HTTP/1.1 way on HTTP/2 too (it had
    # counted 32 bytes more per field, so HTTP/2 answered 431 where HTTP/1.1 answered 200).
    gateway = start_gateway(LIMITS_CONFIG)
    for version in ("--http1.1", "--http2"):
        result = curl(gateway.port, pki, version, "-H", "X-Big: " + "a" * size, "-o",
                      os.devnull, "-w", "%{http_code}", path="/echo")
        assert result.stdout.decode() == status, (version, result.stderr)


def test_expect_100_continue_is_answered_over_http2(gateway, pki, tmp_path):
    # RFC 9110 §10.1.1 applies to HTTP/2 too: without the 100, curl waits a second before
    # it sends the body.
    upload = tmp_path / "body.bin"
    upload.write_bytes(os.urandom(500_000))
    result = curl(gateway.port, pki, "--http2", "-i", "-H", "Expect: 100-continue",
                  "--data-binary", f"@{upload}", path="/echo")
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\nHTTP/2 200")
    assert head.startswith(b"HTTP/2 100"), result.stdout[:200]
    assert json.loads(body.partition(b"\r\n\r\n")[2])["body_sha256"] == \
        hashlib.sha256(upload.read_bytes()).hexdigest()


def test_an_early_answer_drains_the_body_up_to_the_discard_limit_then_resets(start_gateway,
                                                                            pki):
    gateway = start_gateway(LIMITS_CONFIG)
    client = H2Client(gateway.port, pki)
    client.wait_settings()
    stream_id = client.request("POST", "/echo", end_stream=False)
    client.send_body(stream_id, b"x" * 300_000, end_stream=False)     # over max_body_size
    (stream,) = client.wait(stream_id)
    assert stream.status == 413 and stream.reset is None
    sent = 0                    # the client goes on sending: windows reopen, then a reset
    while client.streams[stream_id].reset is None and sent < 2 * DISCARD_LIMIT:
        try:
            window = min(client.conn.local_flow_control_window(stream_id),
                         client.conn.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            break
        if window <= 0:
            client.receive_once(5)
            continue
        client.conn.send_data(stream_id, b"y" * window)
        client.flush()
        sent += window
    while client.streams[stream_id].reset is None:
        client.receive_once(5)
    assert client.streams[stream_id].reset == 0                     # NO_ERROR
    assert DISCARD_LIMIT - 300_000 <= sent < 2 * DISCARD_LIMIT
    assert client.post("/echo", b"ok").status == 200
    client.close()


def test_head_over_http2_has_no_body(gateway, pki):
    client = H2Client(gateway.port, pki)
    stream = client.wait(client.request("HEAD", "/echo?size=4321"))[0]
    assert stream.status == 200
    assert stream.headers["content-length"] == "4321"
    assert bytes(stream.data) == b""
    client.close()


def test_garbage_after_the_preface_is_goaway_protocol_error(gateway, pki, caplog):
    sock = tls_socket(gateway.port, pki, alpn=("h2",))
    assert sock.selected_alpn_protocol() == "h2"
    # The preface, then a HEADERS frame where SETTINGS must come first, with junk in it.
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                 + b"\x00\x00\x08\x01\x04\x00\x00\x00\x01" + b"\xff" * 8)
    answer = read_until_closed(sock)
    sock.close()
    frames = _frames(answer)
    goaways = [payload for kind, _, payload in frames if kind == 0x7]
    assert goaways, frames
    error_code = int.from_bytes(goaways[-1][4:8], "big")
    assert error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert not tlsgate_errors(caplog.records)


def test_random_garbage_after_the_preface_closes_cleanly(gateway, pki, caplog):
    for seed in range(5):
        sock = tls_socket(gateway.port, pki, alpn=("h2",))
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _settings_frame()
                     + hashlib.sha512(bytes([seed])).digest() * 4)
        answer = read_until_closed(sock)
        sock.close()
        assert any(kind == 0x7 for kind, _, _ in _frames(answer)), answer
    assert not tlsgate_errors(caplog.records)
    assert curl(gateway.port, pki, "--http2").returncode == 0


def _settings_frame() -> bytes:
    return b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, stream id, payload) of each complete frame in ``data``."""
    frames, offset = [], 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset:offset + 3], "big")
        kind = data[offset + 3]
        stream_id = int.from_bytes(data[offset + 5:offset + 9], "big") & 0x7FFFFFFF
        frames.append((kind, stream_id, data[offset + 9:offset + 9 + length]))
        offset += 9 + length
    return frames


def test_a_frame_announced_over_the_max_frame_size_is_refused_before_it_arrives(gateway, pki,
                                                                                   caplog):
    """A 16 MB DATA frame header: GOAWAY FRAME_SIZE_ERROR after the next bytes, without the
    gateway waiting for (and holding) 16 MB first."""
    sock = tls_socket(gateway.port, pki, alpn=("h2",))
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _settings_frame()
                 + (16_000_000).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01" + b"x" * 100)
    time.sleep(0.2)
    sock.sendall(b"y" * 100)
    answer = read_until_closed(sock)
    sock.close()
    goaways = [payload for kind, _, payload in _frames(answer) if kind == 0x7]
    assert goaways, _frames(answer)
    assert int.from_bytes(goaways[-1][4:8], "big") == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    assert not tlsgate_errors(caplog.records)


def test_oversized_header_list_is_431_on_its_stream_only(start_gateway, pki):
    gateway = start_gateway(LIMITS_CONFIG)
    result = curl(gateway.port, pki, "--http2", "-H", "X-Big: " + "x" * 8000,
                  "-o", "/dev/null", "-w", "%{http_code}")
    assert result.stdout == b"431", result.stderr
    client = H2Client(gateway.port, pki)
    big = client.request("POST", "/echo", b"body", headers=[("x-big", "y" * 6000)])
    fine = client.request("GET", "/echo", headers=[("x-small", "y" * 2000)])
    big_stream, fine_stream = client.wait(big, fine)
    assert big_stream.status == 431 and fine_stream.status == 200
    assert client.goaway is None
    client.close()


def test_policy_response_header_with_a_utf8_value_goes_out(tmp_path, pki):
    """h2's own outbound checks are off (H2ResponseSink.start checks instead, with the rules
    the HTTP/1.1 path applies): a policy's UTF-8 value arrives intact, lowercase name."""
    policy = """<policies><inbound><base /></inbound><backend><base /></backend><outbound>
      <set-header name="X-Mixed-Case" exists-action="override"><value>résumé</value></set-header>
    </outbound><on-error><base /></on-error></policies>"""
    with policy_gateway(tmp_path, pki, {"headers": policy}) as gateway:
        reply = policy_request(gateway.port, pki, "/headers", http="2")
    assert reply.status == 200
    assert reply.headers["x-mixed-case"].encode("latin-1").decode() == "résumé"


def test_a_small_response_ends_on_its_only_data_frame(gateway, pki):
    """Body and END_STREAM in one DATA frame, not a second empty one."""
    client = H2Client(gateway.port, pki)
    stream = client.get("/echo?small")
    client.close()
    assert stream.status == 200 and stream.json()["query"] == "small"
    assert stream.data_frames == 1 and stream.ended_by_data


class StuckChannel:
    """The PlaintextChannel of a client that never reads: ``drain`` never returns (the
    adapter is sans-IO; this records what it writes and how many handlers finished)."""

    def __init__(self) -> None:
        self.written = 0
        self.finished = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    async def drain(self) -> None:
        await asyncio.get_running_loop().create_future()

    def spawn(self, coro):
        return asyncio.get_running_loop().create_task(coro)

    def request_started(self) -> None:
        pass

    def request_finished(self) -> None:
        self.finished += 1

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    async def client_certificate(self, request):
        return None


def test_answers_to_a_client_that_never_reads_do_not_pile_up():
    """Each handler waits for the socket to take its answer, so at most
    max_concurrent_streams answers are ever queued, however many requests come."""
    async def handler(request, sink):
        await sink.start(200, [(b"content-length", b"1000")])
        await sink.end(b"x" * 1000)

    async def run() -> tuple[int, int]:
        channel = StuckChannel()
        limits = HTTPLimits(max_concurrent_streams=10)
        server = H2Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                              handler, limits)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.increment_flow_control_window(2 ** 30)
        server.receive_data(client.data_to_send())
        for _ in range(300):
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, [(":method", "GET"), (":path", "/"),
                                            (":scheme", "https"), (":authority", "h")],
                                end_stream=True)
            server.receive_data(client.data_to_send())
            await asyncio.sleep(0)
        return channel.finished, channel.written     # (before asyncio.run cancels the rest)

    finished, written = asyncio.run(run())
    assert finished == 0
    assert written < 10 * 1100 + 300 * 100 + 1024     # ten answers, 290 stream resets, settings


def test_header_lists_up_to_the_hard_cap_get_431_beyond_it_goaway(start_gateway, pki):
    """HPACK decoding stops at a hard cap of 4 × max_header_size (64 KiB at least): up to
    it an oversized list costs its stream a 431, beyond it the connection."""
    gateway = start_gateway(LIMITS_CONFIG)          # max_header_size = 4096
    client = H2Client(gateway.port, pki)
    client.wait_settings()
    assert client.get("/echo").status == 200        # our SETTINGS are acknowledged by now
    big = client.request("GET", "/echo", headers=[("x-big", "y" * 60_000)])
    fine = client.request("GET", "/echo")
    big_stream, fine_stream = client.wait(big, fine)
    assert big_stream.status == 431 and fine_stream.status == 200
    assert client.goaway is None
    huge = client.request("GET", "/echo", headers=[("x-huge", "z" * 70_000)])
    with pytest.raises(ConnectionError):
        client.wait(huge)
    assert client.goaway is not None
    client.close()


def test_a_configured_header_limit_over_64_kib_holds_on_http2(start_gateway, pki):
    gateway = start_gateway(LIMITS_CONFIG.replace("max_header_size = 4096",
                                                  "max_header_size = 200000"))
    client = H2Client(gateway.port, pki)
    client.wait_settings()
    stream = client.get("/echo", headers=[("x-big", "y" * 100_000)])
    assert stream.status == 200, stream.headers
    client.close()


@pytest.mark.parametrize("declared, sent", [(20, 10), (5, 10)])
def test_a_body_that_belies_its_content_length_resets_its_stream_only(gateway, pki, access_log,
                                                                      declared, sent):
    """RFC 9113 §8.1.1: a malformed request is a stream error; the connection carries on."""
    client = H2Client(gateway.port, pki)
    client.wait_settings()
    stream_id = client.request("POST", "/echo", end_stream=False,
                               headers=[("content-length", str(declared))])
    client.send_body(stream_id, b"x" * sent)
    (stream,) = client.wait(stream_id)
    assert stream.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert client.get("/echo").status == 200 and client.goaway is None
    client.close()
    refused = [entry for entry in access_log(2) if entry["status"] != 200]
    assert f"{sent} body bytes against a Content-Length of {declared}" in refused[0]["reason"]


class MemoryChannel(StuckChannel):
    """A PlaintextChannel whose socket takes everything at once: what the adapter writes
    is kept for the test's client to read."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.output = bytearray()

    def write(self, data: bytes) -> None:
        super().write(data)
        self.output += data

    def take(self) -> bytes:
        data, self.output = bytes(self.output), bytearray()
        return data

    async def drain(self) -> None:
        return None

    def request_started(self) -> None:
        self.started += 1


def test_streams_reset_before_their_handlers_start_are_released():
    """HEADERS and DATA, then RST_STREAM before the loop ran the stream's task: the task is
    cancelled before it starts. The stream must still be forgotten, its body's bytes given
    back to the connection window, and the connection told that the request is over."""
    async def handler(request, sink):
        await request.body.read_all()
        await sink.start(200, [(b"content-length", b"0")], end_stream=True)

    async def run():
        channel = MemoryChannel()
        server = H2Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                              handler, HTTPLimits(max_concurrent_streams=4,
                                                  h2_connection_window=65535))
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        server.receive_data(client.data_to_send())
        client.receive_data(channel.take())
        request = [(":method", "POST"), (":path", "/"), (":scheme", "https"),
                   (":authority", "h")]
        streams = range(1, 9, 2)          # as many as allowed, 4 × 16,383 body bytes (the
        for stream_id in streams:           # window; each a quarter of it, so credit goes out)
            client.send_headers(stream_id, request)
            client.send_data(stream_id, b"x" * 16383)
        server.receive_data(client.data_to_send())   # their tasks are created...
        for stream_id in streams:
            client.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        server.receive_data(client.data_to_send())   # ...and cancelled before they run
        await asyncio.sleep(0)
        assert not server.busy and channel.started == channel.finished == 4
        client.receive_data(channel.take())
        assert client.outbound_flow_control_window == 65535     # every byte given back
        client.send_headers(9, [(":method", "GET"), *request[1:]], end_stream=True)
        server.receive_data(client.data_to_send())
        await asyncio.sleep(0)
        return client.receive_data(channel.take())

    events = asyncio.run(run())
    assert [e.headers[0] for e in events if isinstance(e, h2.events.ResponseReceived)] == [
        (b":status", b"200")]


def test_a_graceful_goaway_from_the_client_lets_its_streams_finish():
    """GOAWAY(NO_ERROR) means "no new streams": those in flight still get their answer,
    then the connection closes."""
    from hyperframe.frame import DataFrame, Frame

    async def handler(request, sink):
        await asyncio.sleep(0.01)
        await sink.start(200, [(b"content-length", b"2")])
        await sink.end(b"ok")

    async def run():
        channel = MemoryChannel()
        closed = []
        channel.close = lambda: closed.append(True)
        server = H2Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                              handler, HTTPLimits())
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(1, [(":method", "GET"), (":path", "/a"), (":scheme", "https"),
                                (":authority", "h")], end_stream=True)
        client.close_connection()
        server.receive_data(client.data_to_send())
        still_open = not closed
        await asyncio.sleep(0.05)
        return channel.take(), still_open, closed

    output, still_open, closed = asyncio.run(run())
    frames = []
    while output:
        frame, length = Frame.parse_frame_header(memoryview(output[:9]))
        frame.parse_body(memoryview(output[9:9 + length]))
        frames.append(frame)
        output = output[9 + length:]
    answers = [f for f in frames if isinstance(f, DataFrame) and f.stream_id == 1]
    assert still_open and closed
    assert [(f.data, "END_STREAM" in f.flags) for f in answers] == [(b"ok", True)]


def test_a_client_that_provokes_replies_without_reading_them_is_dropped(gateway, pki):
    """PINGs must be answered; a client sending them without ever reading the answers
    would make the gateway queue ACKs forever. Past 8 MiB queued it is dropped."""
    import socket
    import ssl

    from httpclients import client_context
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", gateway.port))
    sock = client_context(pki, alpn=("h2",)).wrap_socket(raw, server_hostname="localhost")
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    pings = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
    batch = pings * 4000
    sock.settimeout(30)
    deadline = time.monotonic() + 60
    with pytest.raises((ConnectionError, ssl.SSLError, TimeoutError)):
        while time.monotonic() < deadline:
            sock.sendall(batch)
        raise AssertionError("still connected after a minute of unread PINGs")
    sock.close()


def test_an_oversized_head_reset_in_the_same_read_is_not_answered():
    """A 431 is owed only to a stream that is still open: here the client reset it in the
    same read, and a good request behind it is served."""
    async def handler(request, sink):
        await sink.start(200, [(b"content-length", b"0")], end_stream=True)

    async def run():
        channel = MemoryChannel()
        server = H2Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                              handler, HTTPLimits(max_header_size=1024))
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        head = [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "h")]
        client.send_headers(1, [*head, ("x-big", "v" * 2000)], end_stream=True)
        client.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
        client.send_headers(3, head, end_stream=True)
        server.receive_data(client.data_to_send())
        await asyncio.sleep(0)
        return client.receive_data(channel.take())

    answered = [e.stream_id for e in asyncio.run(run())
                if isinstance(e, h2.events.ResponseReceived)]
    assert answered == [3]


class PausingChannel(MemoryChannel):
    """A socket that backs up after 64 KiB until the test lets it drain."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.written_while_paused = 0
        self.drained: asyncio.Future | None = None

    def write(self, data: bytes) -> None:
        if self.paused:
            self.written_while_paused += len(data)
        super().write(data)
        if len(self.output) > 65536:
            self.paused = True

    async def drain(self) -> None:
        while self.paused:
            if self.drained is None:
                self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def resume(self) -> None:
        self.paused = False
        self.output.clear()
        if self.drained is not None:
            self.drained.set_result(None)
            self.drained = None


def test_streams_woken_together_do_not_pile_frames_on_a_backed_up_socket():
    """A client may allow 1 MiB DATA frames (Go's does). Frames are capped at 64 KiB and each
    stream waits for the socket before every frame, so 30 streams woken by one drain add one
    frame in all, not 30 MiB of backlog (which would get a reading client dropped)."""
    async def handler(request, sink):
        await sink.start(200, [(b"content-length", b"1000000")])
        await sink.write(b"x" * 1_000_000)
        await sink.end()

    async def run():
        channel = PausingChannel()
        server = H2Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                              handler, HTTPLimits())
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 2**20,
                                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**30})
        client.increment_flow_control_window(2**30)
        for stream_id in range(1, 61, 2):
            client.send_headers(stream_id, [(":method", "GET"), (":path", "/"),
                                            (":scheme", "https"), (":authority", "h")],
                                end_stream=True)
        server.receive_data(client.data_to_send())
        worst = 0
        for _ in range(200):
            await asyncio.sleep(0)
            worst = max(worst, channel.written_while_paused)
            channel.written_while_paused = 0
            channel.resume()
        return worst

    assert asyncio.run(run()) <= 65536 + 1024


def test_a_failure_inside_the_engine_ends_that_connection_with_goaway(caplog):
    """Should the engine ever fail on some input (a bug), that connection gets GOAWAY
    INTERNAL_ERROR and an error in the log; no exception reaches the event loop."""
    from hyperframe.frame import Frame, GoAwayFrame

    channel = MemoryChannel()
    closed = []
    channel.close = lambda: closed.append(True)
    server = H2Connection(channel, ConnectionInfo(("127.0.0.1", 1)),
                          None, HTTPLimits())
    channel.take()

    def broken(data):
        raise RuntimeError("engine bug")

    server._h2.receive_data = broken
    server.receive_data(b"anything")
    frame, length = Frame.parse_frame_header(memoryview(channel.output[:9]))
    frame.parse_body(memoryview(channel.output[9:9 + length]))
    assert isinstance(frame, GoAwayFrame) and frame.error_code == 2   # INTERNAL_ERROR
    assert closed and "HTTP/2 engine failed" in caplog.text
