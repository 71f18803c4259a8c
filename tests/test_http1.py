"""HTTP/1.1 end to end: real TLS over loopback, curl and Python's http.client / ssl.

Keep-alive, pipelining, chunked bodies, ``Expect: 100-continue``, the header and body limits
(431, 413), malformed requests (400), routing (404, longest prefix), HEAD, clients that vanish
mid-body, and the access log line every request leaves behind.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import struct
import time

import pytest
from conftest import BASIC_CONFIG
from httpclients import (
    client_context,
    curl,
    pattern_sha256,
    read_h1_responses,
    read_until_closed,
    sha256,
    tls_socket,
    tlsgate_errors,
)

LIMITS_CONFIG = BASIC_CONFIG.replace(
    "handshake_timeout = 5",
    "handshake_timeout = 5\nmax_header_size = 4096\nmax_body_size = 100000")

ROUTES_CONFIG = BASIC_CONFIG + """
[[api]]
name = "a"
path = "/a"
backend = "echo:"

[[api]]
name = "ab"
path = "/a/b"
backend = "echo:"
"""


pytestmark = pytest.mark.usefixtures("no_tracebacks")


def https(gateway, pki, *, cert: str | None = "client") -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", gateway.port, timeout=10,
                                       context=client_context(pki, cert=cert))


# -- keep-alive and pipelining ------------------------------------------------------------------

def test_curl_keep_alive_serves_several_requests_on_one_connection(gateway, pki, thumbprints,
                                                                   access_log):
    url = gateway.url("/echo")
    result = curl(gateway.port, pki, "--http1.1", "-w", "\\n%{num_connects}\\n",
                  url + "?n=1", url + "?n=2", url + "?n=3", url=url + "?n=0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split("\n")
    bodies = [json.loads(line) for line in lines if line.startswith("{")]
    connects = [int(line) for line in lines if line.isdigit()]
    assert [b["query"] for b in bodies] == ["n=1", "n=2", "n=3", "n=0"]
    assert connects == [1, 0, 0, 0]               # one TCP+TLS connection, then reuse
    log = access_log(4)
    assert len(log) == 4
    assert len({entry["client"] for entry in log}) == 1   # same client address and port
    for entry in log:
        assert entry["status"] == 200
        assert entry["certificate_origin"] == "handshake"
        assert entry["thumbprint"] == thumbprints["client.pem"]["thumbprint"]
        assert entry["http_version"] == "1.1" and entry["alpn"] == "http/1.1"


def test_http_client_keep_alive_on_one_socket(gateway, pki, thumbprints, access_log):
    conn = https(gateway, pki)
    sockets = []
    for i in range(5):
        body = os.urandom(1000 * i)
        conn.request("POST", f"/echo?i={i}", body=body)
        response = conn.getresponse()
        echo = json.loads(response.read())
        assert response.status == 200
        assert echo["body_sha256"] == sha256(body) and echo["body_bytes"] == len(body)
        assert echo["client_certificate"]["thumbprint"] == \
            thumbprints["client.pem"]["thumbprint"]
        sockets.append(conn.sock)
    conn.close()
    assert all(sock is sockets[0] for sock in sockets)
    assert len({entry["client"] for entry in access_log(5)}) == 1


def test_pipelined_requests_in_one_write_are_answered_in_order(gateway, pki):
    sock = tls_socket(gateway.port, pki)
    body = b"pipelined body"
    sock.sendall(
        b"GET /echo?first HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"POST /echo?second HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
        b"GET /echo?third HTTP/1.1\r\nHost: localhost\r\n\r\n" % (len(body), body))
    responses = read_h1_responses(sock, 3)
    sock.close()
    assert [r.status for r in responses] == [200, 200, 200]
    echoes = [r.json() for r in responses]
    assert [e["query"] for e in echoes] == ["first", "second", "third"]
    assert echoes[1]["body_sha256"] == sha256(body)


# -- request bodies ------------------------------------------------------------------------------

def test_curl_chunked_request_body(gateway, pki, tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "body").write_bytes(data)
    result = curl(gateway.port, pki, "--http1.1", "-H", "Transfer-Encoding: chunked",
                  "--data-binary", f"@{tmp_path / 'body'}")
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["headers"]["transfer-encoding"] == "chunked"
    assert echo["body_bytes"] == len(data)
    assert echo["body_sha256"] == sha256(data)


def test_http_client_chunked_request_body(gateway, pki):
    pieces = [os.urandom(n) for n in (1, 4096, 70_000, 3)]
    conn = https(gateway, pki)
    conn.request("PUT", "/echo/chunked", body=iter(pieces), encode_chunked=True)
    response = conn.getresponse()
    echo = json.loads(response.read())
    conn.close()
    assert response.status == 200
    assert echo["method"] == "PUT"
    assert echo["body_sha256"] == sha256(b"".join(pieces))


def test_expect_100_continue(gateway, pki, tmp_path):
    data = os.urandom(200_000)
    (tmp_path / "body").write_bytes(data)
    result = curl(gateway.port, pki, "--http1.1", "-v", "-H", "Expect: 100-continue",
                  "--data-binary", f"@{tmp_path / 'body'}")
    assert result.returncode == 0, result.stderr
    stderr = result.stderr.decode()
    assert "< HTTP/1.1 100 Continue" in stderr
    assert stderr.index("100 Continue") < stderr.index("< HTTP/1.1 200")
    assert json.loads(result.stdout)["body_sha256"] == sha256(data)


def test_expect_100_continue_over_a_raw_socket_waits_for_the_interim_answer(gateway, pki):
    sock = tls_socket(gateway.port, pki)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    sock.settimeout(5)
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        interim += sock.recv(65536)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"hello")
    (response,) = read_h1_responses(sock, 1)
    sock.close()
    assert response.status == 200 and response.reason == b"OK"
    assert response.json()["body_sha256"] == sha256(b"hello")


# -- limits ------------------------------------------------------------------------------------

def test_oversized_header_block_is_431(start_gateway, pki, access_log):
    gateway = start_gateway(LIMITS_CONFIG)
    result = curl(gateway.port, pki, "--http1.1", "-H", "X-Big: " + "x" * 8000,
                  "-o", "/dev/null", "-w", "%{http_code}")
    assert result.stdout == b"431", result.stderr
    # a head that arrives in several TLS records: the client still reads the 431 (the
    # gateway does not reset the connection while the client is still sending)
    result = curl(gateway.port, pki, "--http1.1", "-H", "X-Big: " + "x" * 70000,
                  "-o", "/dev/null", "-w", "%{http_code}")
    assert result.stdout == b"431", result.stderr
    # a header block just under the limit is fine
    result = curl(gateway.port, pki, "--http1.1", "-H", "X-Big: " + "x" * 2000,
                  "-o", "/dev/null", "-w", "%{http_code}")
    assert result.stdout == b"200", result.stderr
    # Every request has its access-log line, also the ones the HTTP layer refused itself.
    assert [entry["status"] for entry in access_log(3)] == [431, 431, 200]


def test_content_length_over_the_limit_is_413_before_the_body_is_read(start_gateway, pki,
                                                                      tmp_path, access_log):
    gateway = start_gateway(LIMITS_CONFIG)
    (tmp_path / "body").write_bytes(b"x" * 100_001)
    result = curl(gateway.port, pki, "--http1.1", "-v", "--data-binary",
                  f"@{tmp_path / 'body'}")
    stderr = result.stderr.decode()
    assert "< HTTP/1.1 413" in stderr, stderr
    assert "100 Continue" not in stderr          # refused without asking for the body
    assert json.loads(result.stdout)["statusCode"] == 413
    # exactly the limit passes
    (tmp_path / "body").write_bytes(b"x" * 100_000)
    result = curl(gateway.port, pki, "--http1.1", "--data-binary", f"@{tmp_path / 'body'}")
    assert json.loads(result.stdout)["body_bytes"] == 100_000
    assert [e["status"] for e in access_log(2)] == [413, 200]


def test_content_length_over_the_limit_sent_without_expect_is_413(start_gateway, pki):
    """http.client sends the whole body without waiting: it must still read the 413."""
    gateway = start_gateway(LIMITS_CONFIG)
    conn = https(gateway, pki)
    conn.request("POST", "/echo", body=b"y" * 400_000)
    response = conn.getresponse()
    assert response.status == 413
    assert response.getheader("connection") == "close"
    assert json.loads(response.read())["statusCode"] == 413
    conn.close()


def test_chunked_body_crossing_the_limit_is_413(start_gateway, pki, access_log):
    gateway = start_gateway(LIMITS_CONFIG)
    conn = https(gateway, pki)
    pieces = (b"z" * 16384 for _ in range(64))          # 1 MiB in 16 KiB chunks
    conn.request("POST", "/echo", body=pieces, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["statusCode"] == 413
    conn.close()
    (entry,) = access_log(1)
    assert entry["status"] == 413 and entry["reason"] == "BodyTooLarge"


def test_curl_chunked_body_crossing_the_limit_is_413(start_gateway, pki, tmp_path):
    gateway = start_gateway(LIMITS_CONFIG)
    (tmp_path / "body").write_bytes(b"z" * 1_000_000)
    result = curl(gateway.port, pki, "--http1.1", "-H", "Transfer-Encoding: chunked",
                  "--data-binary", f"@{tmp_path / 'body'}", "-o", "/dev/null",
                  "-w", "%{http_code}")
    assert result.stdout == b"413", result.stderr


def test_413_does_not_stall_the_next_request_on_a_keep_alive_connection(start_gateway, pki):
    """After a 413 the connection either serves the next request or is closed: never hangs."""
    gateway = start_gateway(LIMITS_CONFIG)
    sock = tls_socket(gateway.port, pki)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (16384, b"q" * 16384)
    sock.sendall(chunk * 40 + b"0\r\n\r\n")                  # 640 KiB: over the limit
    (response,) = read_h1_responses(sock, 1)
    assert response.status == 413
    assert response.headers.get("connection") == "close"
    sock.settimeout(5)
    assert read_until_closed(sock) == b""                    # closed, not stalled
    sock.close()


# -- malformed requests and routing ------------------------------------------------------------

def test_malformed_request_line_is_400(gateway, pki, caplog, access_log):
    sock = tls_socket(gateway.port, pki)
    sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    answer = read_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"connection: close" in answer.lower()
    assert not tlsgate_errors(caplog.records)
    (entry,) = access_log(1)
    assert entry["status"] == 400 and entry["reason"] and entry["thumbprint"]


def test_unknown_path_is_404(gateway, pki, access_log):
    result = curl(gateway.port, pki, "--http1.1", "-w", "\\n%{http_code}", path="/nothing/here")
    body, _, code = result.stdout.decode().rpartition("\n")
    assert code == "404"
    assert json.loads(body)["statusCode"] == 404
    # "/echo" is a path segment prefix: "/echoes" is not served by it
    result = curl(gateway.port, pki, "--http1.1", "-o", "/dev/null", "-w", "%{http_code}",
                  path="/echoes")
    assert result.stdout == b"404"
    assert [(e["path"], e["status"], e["api"]) for e in access_log(2)] == [
        ("/nothing/here", 404, None), ("/echoes", 404, None)]


def test_longest_prefix_routing(start_gateway, pki, access_log):
    gateway = start_gateway(ROUTES_CONFIG)
    for path in ("/a", "/a/x", "/a/b", "/a/b/c", "/a/bc", "/echo/a/b"):
        result = curl(gateway.port, pki, "--http1.1", path=path)
        assert json.loads(result.stdout)["path"] == path
    assert [e["api"] for e in access_log(6)] == ["a", "a", "ab", "ab", "a", "echo"]


def test_head_has_headers_but_no_body(gateway, pki):
    conn = https(gateway, pki)
    conn.request("GET", "/echo?size=12345")
    get = conn.getresponse()
    assert get.status == 200 and len(get.read()) == 12345
    conn.request("HEAD", "/echo?size=12345")
    head = conn.getresponse()
    assert head.status == 200
    assert head.getheader("content-length") == "12345"
    assert head.read() == b""
    # the connection is still in sync: a GET right after works
    conn.request("GET", "/echo?size=1000")
    again = conn.getresponse()
    data = again.read()
    assert again.status == 200 and hashlib.sha256(data).hexdigest() == pattern_sha256(1000)
    conn.close()
    result = curl(gateway.port, pki, "--http1.1", "-I")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/1.1 200")


def test_download_has_content_length(gateway, pki):
    result = curl(gateway.port, pki, "--http1.1", "-D", "-", "-o", "/dev/null",
                  path="/echo?size=3000000")
    headers = result.stdout.decode().lower()
    assert "content-length: 3000000" in headers
    assert "transfer-encoding" not in headers


def test_client_vanishing_mid_body_leaves_the_gateway_healthy(gateway, pki, caplog,
                                                              access_log):
    for how in ("close", "reset"):
        sock = tls_socket(gateway.port, pki)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n"
                     b"\r\n" + b"a" * 100_000)
        if how == "reset":
            # SO_LINGER on, 0 seconds: close() sends a reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    result = curl(gateway.port, pki, "--http1.1", "--data-binary", "after")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["body_sha256"] == sha256(b"after")
    assert not tlsgate_errors(caplog.records)
    # abandoned requests are logged too (499; the reset one may die before it is read)
    statuses = [e["status"] for e in access_log(3, timeout=1)]
    assert statuses.count(200) == 1 and statuses.count(499) >= 1, statuses


def test_malformed_chunked_body_is_400_without_a_traceback(gateway, pki, caplog):
    sock = tls_socket(gateway.port, pki)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n")
    time.sleep(0.2)                     # the echo backend is reading the body by now
    sock.sendall(b"not-a-chunk-size\r\n\r\n")
    answer = read_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    time.sleep(0.2)
    assert not tlsgate_errors(caplog.records)


def test_content_length_with_transfer_encoding_is_refused(gateway, pki):
    sock = tls_socket(gateway.port, pki)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    answer = read_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer


def test_unsupported_transfer_encoding_is_501(gateway, pki):
    sock = tls_socket(gateway.port, pki)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked"
                 b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    answer = read_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n"), answer


def test_absolute_form_target(gateway, pki):
    sock = tls_socket(gateway.port, pki)
    sock.sendall(b"GET https://localhost/echo/x?q=1 HTTP/1.1\r\nHost: ignored.example\r\n\r\n"
                 b"GET https://localhost?q=2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    echo, root = read_h1_responses(sock, 2)
    sock.close()
    assert echo.status == 200
    assert (echo.json()["path"], echo.json()["query"]) == ("/echo/x", "q=1")
    assert root.status == 404                # "/" is not served, but it was parsed as "/"


def test_http10_request_without_host_is_not_misdirected(gateway, pki):
    sock = tls_socket(gateway.port, pki, cert=None, server_hostname="open.localhost")
    sock.sendall(b"GET /echo HTTP/1.0\r\n\r\n")
    answer = read_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["http_version"] == "1.0"
