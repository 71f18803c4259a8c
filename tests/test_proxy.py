"""The gateway as a reverse proxy: real clients → TLS → gateway → ``http://`` backend → origin.

The origin runs in a subprocess (``httpclients.OriginProcess``): it hashes request bodies,
streams large downloads and reports the headers it received. The gateway runs in this process
(a thread), so tracemalloc measures the gateway alone while curl (a subprocess) moves 10 MB
through it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import BASIC_CONFIG
from cryptography import x509
from httpclients import (
    H2Client,
    closed_port,
    curl,
    pattern_sha256,
    read_h1_responses,
    sha256,
    tls_socket,
)

from tlsgate.certs.header_formats import FORMATS, decode_certificate

MB = 1024 * 1024
TEN_MB = 10 * MB


def proxy_config(port: int, *, timeout: float = 10, extra: str = "") -> str:
    return BASIC_CONFIG + f"""
[[api]]
name = "proxy"
path = "/proxy"
backend = "http://127.0.0.1:{port}/base"
timeout = {timeout}
""" + extra


pytestmark = pytest.mark.usefixtures("no_tracebacks")


def origin_headers(summary: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in summary["headers"]:
        out.setdefault(name, []).append(value)
    return out


def traced_peak(action) -> tuple[object, int]:
    """Run ``action`` and return its result and the peak of memory newly allocated by this
    process meanwhile (the gateway thread; curl and the origin are other processes)."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = action()
        return result, tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


# -- streaming, bounded memory ------------------------------------------------------------------

@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_10mb_upload_through_the_proxy_in_bounded_memory(start_gateway, origin, pki, tmp_path,
                                                         version, access_log):
    gateway = start_gateway(proxy_config(origin.port))
    data = os.urandom(TEN_MB)
    (tmp_path / "upload").write_bytes(data)
    result, peak = traced_peak(lambda: curl(
        gateway.port, pki, version, "--data-binary", f"@{tmp_path / 'upload'}",
        path="/proxy/upload"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["target"] == "/base/upload"   # the API's /proxy prefix maps onto /base
    assert summary["body_bytes"] == TEN_MB and summary["body_sha256"] == sha256(data)
    assert peak < 4 * MB, f"gateway peak {peak / MB:.1f} MB for a 10 MB upload"
    assert peak > 64 * 1024           # the gateway thread is traced: buffers in flight show
    (entry,) = access_log(1)
    assert entry["status"] == 200 and entry["api"] == "proxy"
    assert entry["bytes_in"] == TEN_MB


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_10mb_download_through_the_proxy_in_bounded_memory(start_gateway, origin, pki,
                                                           tmp_path, version, access_log):
    gateway = start_gateway(proxy_config(origin.port))
    target = tmp_path / "download"
    result, peak = traced_peak(lambda: curl(
        gateway.port, pki, version, "-o", str(target), "-D", "-",
        path=f"/proxy/file?size={TEN_MB}"))
    assert result.returncode == 0, result.stderr
    assert f"content-length: {TEN_MB}" in result.stdout.decode().lower()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == pattern_sha256(TEN_MB)
    assert peak < 4 * MB, f"gateway peak {peak / MB:.1f} MB for a 10 MB download"
    assert peak > 64 * 1024
    (entry,) = access_log(1)
    assert entry["status"] == 200 and entry["bytes_out"] == TEN_MB


def test_proxy_over_http2_streams_many_requests_on_one_connection(start_gateway, origin, pki):
    gateway = start_gateway(proxy_config(origin.port))
    client = H2Client(gateway.port, pki)
    bodies = {client.request("POST", f"/proxy/s{i}", os.urandom(20_000 * i)): i
              for i in range(1, 9)}
    # bodies were sent in full above; check what the origin saw for each stream
    for stream_id, stream in zip(bodies, client.wait(*bodies), strict=True):
        assert stream.status == 200
        summary = stream.json()
        assert summary["target"].endswith(f"/s{bodies[stream_id]}")
        assert summary["body_bytes"] == 20_000 * bodies[stream_id]
    client.close()


def test_head_through_the_proxy(start_gateway, origin, pki):
    gateway = start_gateway(proxy_config(origin.port))
    sock = tls_socket(gateway.port, pki)
    sock.sendall(b"HEAD /proxy/h?size=5000 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                 b"GET /proxy/g?size=10 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, get = read_h1_responses(sock, 2, methods=[b"HEAD", b"GET"])
    sock.close()
    assert head.status == 200 and head.headers["content-length"] == "5000" and head.body == b""
    assert get.status == 200 and get.body == bytes(range(10))


# -- backend failures ---------------------------------------------------------------------------

def test_closed_backend_port_is_502(start_gateway, pki, access_log):
    gateway = start_gateway(proxy_config(closed_port()))
    for version in ("--http1.1", "--http2"):
        result = curl(gateway.port, pki, version, "-w", "\n%{http_code}", path="/proxy/x")
        body, _, code = result.stdout.decode().rpartition("\n")
        assert code == "502", result.stderr
        assert json.loads(body)["statusCode"] == 502
    assert [e["status"] for e in access_log(2)] == [502, 502]


def test_slow_origin_is_504_after_the_timeout(start_gateway, origin, pki, access_log):
    gateway = start_gateway(proxy_config(origin.port, timeout=0.5))
    started = time.monotonic()
    result = curl(gateway.port, pki, "--http1.1", "-w", "\n%{http_code}",
                  path="/proxy/slow?delay=3")
    elapsed = time.monotonic() - started
    body, _, code = result.stdout.decode().rpartition("\n")
    assert code == "504", result.stderr
    assert json.loads(body)["statusCode"] == 504
    assert elapsed < 2.5
    # a quick answer on the same API is fine
    result = curl(gateway.port, pki, "--http2", "-o", "/dev/null", "-w", "%{http_code}",
                  path="/proxy/fast?delay=0.05")
    assert result.stdout == b"200"
    assert [e["status"] for e in access_log(2)] == [504, 200]


# -- the client certificate passed upstream ------------------------------------------------------

def upstream_config(port: int, fmt: str) -> str:
    return proxy_config(port, extra=f"""
[upstream_client_certificate]
header = "X-Client-Cert"
format = "{fmt}"
""")


def client_certificate(pki: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates((pki / "client.pem").read_bytes())[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_upstream_client_certificate_header(start_gateway, origin, pki, fmt):
    gateway = start_gateway(upstream_config(origin.port, fmt))
    expected = client_certificate(pki)
    for version in ("--http1.1", "--http2"):
        # the client's own copy of the header is a forgery: it never reaches the origin
        result = curl(gateway.port, pki, version, "-H", "X-Client-Cert: forged",
                      "-H", "x-client-cert: forged-again", path="/proxy/who")
        assert result.returncode == 0, result.stderr
        values = origin_headers(json.loads(result.stdout)).get("x-client-cert", [])
        assert len(values) == 1, values
        assert decode_certificate(values[0], fmt) == expected
    # without a client certificate nothing is passed on, and the forgery is still removed
    for sni in ("localhost", "open.localhost"):
        result = curl(gateway.port, pki, "--http1.1", "--resolve",
                      f"{sni}:{gateway.port}:127.0.0.1", "-H", "X-Client-Cert: forged",
                      cert=None, host=sni, path="/proxy/who")
        assert result.returncode == 0, result.stderr
        headers = origin_headers(json.loads(result.stdout))
        assert "x-client-cert" not in headers, headers


# -- Host / SNI mismatch -------------------------------------------------------------------------

def test_host_naming_other_client_certificate_settings_is_421(gateway, pki, access_log):
    port = gateway.port
    resolve = ("--resolve", f"open.localhost:{port}:127.0.0.1")
    for version in ("--http1.1", "--http2"):
        # SNI open.localhost (no certificate asked), Host localhost (handshake mode): 421
        result = curl(port, pki, version, *resolve, "-H", "Host: localhost",
                      "-w", "\n%{http_code}", host="open.localhost")
        body, _, code = result.stdout.decode().rpartition("\n")
        assert code == "421", result.stderr
        assert json.loads(body)["statusCode"] == 421
        # the other way round too
        result = curl(port, pki, version, *resolve, "-H", f"Host: open.localhost:{port}",
                      "-o", "/dev/null", "-w", "%{http_code}")
        assert result.stdout == b"421"
        # matching names, or names with the same settings, are served
        result = curl(port, pki, version, *resolve, "-o", "/dev/null", "-w", "%{http_code}",
                      host="open.localhost")
        assert result.stdout == b"200"
        result = curl(port, pki, version, "-H", "Host: unknown.example", "-o", "/dev/null",
                      "-w", "%{http_code}")          # "default": same settings as localhost
        assert result.stdout == b"200"
    assert [e["status"] for e in access_log(8)] == [421, 421, 200, 200] * 2


# -- clients that leave ---------------------------------------------------------------------------

def test_client_leaving_mid_upload_or_download_through_the_proxy(start_gateway, origin, pki,
                                                                 access_log):
    gateway = start_gateway(proxy_config(origin.port))
    # HTTP/1.1: the connection drops halfway through a 5 MB upload
    sock = tls_socket(gateway.port, pki)
    sock.sendall(b"POST /proxy/up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000000\r\n\r\n"
                 + os.urandom(1_000_000))
    sock.close()
    # HTTP/2: one stream reset mid-upload, one mid-download (the client window is closed)
    client = H2Client(gateway.port, pki, auto_ack=False)
    client.wait_settings()
    upload = client.request("POST", "/proxy/up2", os.urandom(300_000), end_stream=False)
    download = client.request("GET", f"/proxy/down?size={TEN_MB}")
    deadline = time.monotonic() + 5
    while not client.streams[download].data and time.monotonic() < deadline:
        client.receive_once()
    for stream_id in (upload, download):
        client.conn.reset_stream(stream_id)
    client.conn.acknowledge_received_data(len(client.streams[download].data), download)
    client.flush()
    client.auto_ack = True
    body = os.urandom(100_000)
    after = client.post("/proxy/after", body)
    assert after.status == 200 and after.json()["body_sha256"] == sha256(body)
    client.close()
    result = curl(gateway.port, pki, "--http1.1", "--data-binary", "x", path="/proxy/again")
    assert json.loads(result.stdout)["body_sha256"] == sha256(b"x")
    log = access_log(5)
    assert sorted(e["status"] for e in log) == [200, 200, 499, 499, 499], log
    (download_line,) = [e for e in log if e["path"] == "/proxy/down"]
    assert 0 < download_line["bytes_out"] < TEN_MB        # cut short, and logged as such


def test_bytes_pipelined_behind_a_slow_request_wait_in_the_socket(start_gateway, origin, pki):
    """While a request is being answered, what the client pipelines behind it is read only
    up to a bound: the rest waits in the socket, not in gateway memory."""
    gateway = start_gateway(proxy_config(origin.port))
    body = os.urandom(TEN_MB)
    payload = memoryview(
        b"GET /proxy/slow?delay=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
        + b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % TEN_MB
        + body)
    sock = tls_socket(gateway.port, pki)

    def exchange():
        sent = 0
        sock.settimeout(0.7)        # less than the origin's delay: the gateway is busy
        try:
            while sent < len(payload):
                sent += sock.send(payload[sent:sent + 65536])
        except TimeoutError:
            pass                    # it stopped reading (what was sent sits in socket buffers)
        sock.settimeout(10)
        sock.sendall(payload[sent:])    # the slow answer is done: reading resumes
        return read_h1_responses(sock, 2)

    (slow, echo), peak = traced_peak(exchange)
    sock.close()
    assert slow.status == 200 and slow.json()["target"].endswith("/slow?delay=1")
    assert echo.status == 200 and echo.json()["body_sha256"] == sha256(body)
    assert peak < 4 * MB, f"gateway peak {peak / MB:.1f} MB with 10 MB pipelined"
