"""The real clients of the deadlock matrix, one request each, and what each one observed.

=================  ========================================================================
client id          what it runs
=================  ========================================================================
``curl``           curl ``--data-binary @FILE -H 'Expect:'``: the body is in flight at once
``curl-expect``    curl ``--data-binary @FILE -H 'Expect: 100-continue'``: waits for 100
``pyhttp-pha``     Python ``http.client`` over ``ssl`` with ``post_handshake_auth = True``
``pyhttp-nopha``   the same with ``post_handshake_auth = False``
``s_client``       ``openssl s_client -enable_pha -quiet`` fed a raw HTTP/1.1 request by ``cat``
=================  ========================================================================

Every client presents the dev PKI's ``client.pem`` when asked, connects to 127.0.0.1 with the
mode's SNI name, streams the body from its file, and reports an :class:`Exchange`; no driver
raises. Only curl speaks HTTP/2 here.
"""

from __future__ import annotations

import http.client
import os
import select
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import h11

CLIENTS = ("curl", "curl-expect", "pyhttp-pha", "pyhttp-nopha", "s_client")
HTTP2_CLIENTS = ("curl", "curl-expect")

# curl exit codes of a failed (initial) TLS handshake.
_CURL_TLS_ERRORS = {35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 83, 90, 91}
_CURL_TLS_FLAGS = {"1.2": ["--tlsv1.2", "--tls-max", "1.2"],
                   "1.3": ["--tlsv1.3", "--tls-max", "1.3"]}
_SSL_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class Target:
    """One request to make: where, with which body, protocol versions and patience."""

    host: str
    port: int
    pki: Path
    body: Path
    size: int
    method: str
    tls: str            # "1.2" | "1.3"
    http: str           # "1.1" | "2"
    timeout: float      # the client gives up after this many seconds

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/echo"


@dataclass
class Exchange:
    """What a client saw: a final status and body, or why there is none."""

    status: int | None = None
    body: bytes = b""
    http11_retry: bool = False      # curl saw HTTP_1_1_REQUIRED and retried over HTTP/1.1
    tls_error: bool = False         # the initial handshake failed
    error: str = ""                 # client-side failure, with or without a status
    seconds: float = 0.0
    answered_at: float = 0.0        # time.monotonic() when the response was complete, if known


def supports(client: str, http: str) -> bool:
    return http == "1.1" or client in HTTP2_CLIENTS


def run_client(client: str, target: Target) -> Exchange:
    """Run one request with ``client``; the elapsed time is measured around the client."""
    driver = {
        "curl": lambda: _curl(target, expect_100=False),
        "curl-expect": lambda: _curl(target, expect_100=True),
        "pyhttp-pha": lambda: _http_client(target, post_handshake_auth=True),
        "pyhttp-nopha": lambda: _http_client(target, post_handshake_auth=False),
        "s_client": lambda: _s_client(target),
    }[client]
    started = time.monotonic()
    try:
        exchange = driver()
    except Exception as exc:    # a driver bug must not lose the whole matrix
        exchange = Exchange(error=f"{type(exc).__name__}: {exc}")
    if exchange.answered_at:    # the response was complete before the client exited
        exchange.seconds = exchange.answered_at - started
    else:
        exchange.seconds = time.monotonic() - started
    return exchange


# -- curl ----------------------------------------------------------------------------------

def curl_command(target: Target, *, expect_100: bool) -> list[str]:
    pki = target.pki
    return [
        _tool("curl"), "-sS", "-v", "--max-time", f"{target.timeout:g}",
        "--cacert", str(pki / "root.pem"),
        "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"),
        "--resolve", f"{target.host}:{target.port}:127.0.0.1",
        *_CURL_TLS_FLAGS[target.tls], "--http2" if target.http == "2" else "--http1.1",
        "-X", target.method, "--data-binary", f"@{target.body}",
        "-H", "Expect: 100-continue" if expect_100 else "Expect:",
        "-w", "\n%{http_code}", target.url,
    ]


def _curl(target: Target, *, expect_100: bool) -> Exchange:
    try:
        result = subprocess.run(curl_command(target, expect_100=expect_100),
                                capture_output=True, timeout=target.timeout + 10)
    except subprocess.TimeoutExpired:
        return Exchange(error="curl hung past its --max-time")
    body, _, code = result.stdout.rpartition(b"\n")
    exchange = Exchange(status=int(code) if code.strip().isdigit() and int(code) else None,
                        body=body,
                        http11_retry=b"HTTP_1_1_REQUIRED" in result.stderr)
    if result.returncode in _CURL_TLS_ERRORS and exchange.status is None:
        exchange.tls_error = True
    if result.returncode:
        exchange.error = _last_line(result.stderr, prefix=b"curl: ") or \
            f"curl exit {result.returncode}"
    return exchange


# -- Python http.client --------------------------------------------------------------------

class _LoopbackHTTPSConnection(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 whatever the host name, which still goes into SNI and Host."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def client_ssl_context(pki: Path, tls: str, *, post_handshake_auth: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "root.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    context.minimum_version = context.maximum_version = _SSL_VERSIONS[tls]
    context.post_handshake_auth = post_handshake_auth
    context.set_alpn_protocols(["http/1.1"])
    return context


def _http_client(target: Target, *, post_handshake_auth: bool) -> Exchange:
    context = client_ssl_context(target.pki, target.tls, post_handshake_auth=post_handshake_auth)
    connection = _LoopbackHTTPSConnection(target.host, target.port, context=context,
                                          timeout=target.timeout)
    try:
        try:
            connection.connect()
        except ssl.SSLError as exc:
            return Exchange(tls_error=True, error=f"handshake: {exc}")
        send_error = _send_request(connection, target)
        return _read_response(connection, send_error)
    finally:
        connection.close()


def _send_request(connection: http.client.HTTPSConnection, target: Target) -> str:
    """Stream the body file (8 KiB blocks); '' or why sending stopped."""
    headers = {"Host": f"{target.host}:{target.port}", "Content-Length": str(target.size)}
    try:
        with target.body.open("rb") as body:
            connection.request(target.method, "/echo", body=body, headers=headers)
    except OSError as exc:
        return f"send: {_describe(exc)}"
    return ""


def _read_response(connection: http.client.HTTPSConnection, send_error: str) -> Exchange:
    """The response, even when sending failed: the gateway may have answered early."""
    try:
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return Exchange(error="; ".join(filter(None, [send_error, f"read: {_describe(exc)}"])))
    return Exchange(status=response.status, body=body, error=send_error)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


# -- openssl s_client ----------------------------------------------------------------------

def s_client_command(target: Target) -> list[str]:
    pki = target.pki
    return [
        _tool("openssl"), "s_client", "-connect", f"127.0.0.1:{target.port}",
        "-servername", target.host, "-CAfile", str(pki / "root.pem"),
        "-cert", str(pki / "client.pem"), "-key", str(pki / "client.key"),
        "-tls1_2" if target.tls == "1.2" else "-tls1_3", "-alpn", "http/1.1",
        "-enable_pha", "-quiet", "-nocommands",
    ]


def request_head(target: Target) -> bytes:
    return (f"{target.method} /echo HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
            f"Content-Length: {target.size}\r\nConnection: close\r\n\r\n").encode()


def _s_client(target: Target) -> Exchange:
    """``cat HEAD BODY | openssl s_client ...``: the body streams from its file. The exchange
    ends when the response is complete (as for a browser), not when s_client exits."""
    head = target.body.with_name(
        f"head-{target.method}-{target.host}-tls{target.tls}-{target.size}.txt")
    head.write_bytes(request_head(target))
    feeder = subprocess.Popen([_tool("cat"), str(head), str(target.body)],
                              stdout=subprocess.PIPE)
    process = subprocess.Popen(s_client_command(target), stdin=feeder.stdout,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    feeder.stdout.close()           # s_client owns the pipe now
    try:
        reader = RawResponseReader()
        timed_out = not _read_until_complete(process, reader, target.timeout)
        answered_at = time.monotonic() if reader.complete else 0.0
        closed = reader.complete and _closes_soon(process)
    finally:
        for child in (process, feeder):
            child.kill()
            child.wait()
    stderr = process.stderr.read()
    process.stderr.close()
    process.stdout.close()
    if reader.status is None and not timed_out and _tls_failure(stderr):
        return Exchange(tls_error=True, error=_last_line(stderr))
    error = "s_client timed out" if timed_out else "" if reader.complete else \
        (_last_line(stderr) or "connection closed before the response ended")
    exchange = reader.exchange(error)
    exchange.answered_at = answered_at
    if reader.complete and not closed:
        exchange.error = "connection still open 1 s after a Connection: close response"
    return exchange


def _read_until_complete(process: subprocess.Popen, reader: RawResponseReader,
                         timeout: float) -> bool:
    """Feed s_client's stdout to ``reader`` until the response is complete or the
    connection closes (True), or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not reader.complete:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            reader.feed(chunk)
            if not chunk:
                break
    return True


def _closes_soon(process: subprocess.Popen) -> bool:
    """After the response: does the gateway close the connection (s_client sees EOF)?"""
    deadline = time.monotonic() + 1.0
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if ready and not os.read(process.stdout.fileno(), 65536):
            return True
    return False


def _tls_failure(stderr: bytes) -> bool:
    return any(word in stderr for word in (b"handshake failure", b"alert", b"ssl_",
                                           b"SSL routines"))


class RawResponseReader:
    """Parses the first final HTTP/1.1 response out of raw bytes, as they come."""

    def __init__(self) -> None:
        self._parser = h11.Connection(h11.CLIENT)
        # h11 reads a response only after the request it answers (HEAD has no body).
        self._parser.send(h11.Request(method=b"POST", target=b"/",
                                      headers=[(b"host", b"x"), (b"content-length", b"0")]))
        self._parser.send(h11.EndOfMessage())
        self.status: int | None = None
        self.body = bytearray()
        self.complete = False
        self.problem = ""

    def feed(self, data: bytes) -> None:
        """Bytes from the server; ``b""`` for the end of the connection."""
        if self.complete or self.problem:
            return
        self._parser.receive_data(data)
        try:
            while (event := self._parser.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                if type(event) is h11.Response:
                    self.status = event.status_code
                elif type(event) is h11.Data:
                    self.body += event.data
                elif type(event) in (h11.EndOfMessage, h11.ConnectionClosed):
                    self.complete = True
                    return
        except h11.RemoteProtocolError as exc:
            self.problem = f"bad response: {exc}"

    def exchange(self, error: str) -> Exchange:
        if self.status is None:
            return Exchange(error=error or self.problem or "no response")
        return Exchange(status=self.status, body=bytes(self.body),
                        error=error or self.problem)


# -- helpers -------------------------------------------------------------------------------

def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed")
    return path


def _last_line(stderr: bytes, *, prefix: bytes = b"") -> str:
    lines = [line for line in stderr.splitlines() if line.strip()
             and (not prefix or line.startswith(prefix))]
    return lines[-1].decode(errors="replace").strip()[:200] if lines else ""


def available_clients() -> dict[str, str]:
    """client id → '' when its program is installed, else why it cannot run."""
    missing = {tool: shutil.which(tool) is None for tool in ("curl", "openssl", "cat")}
    return {
        "curl": "curl is not installed" if missing["curl"] else "",
        "curl-expect": "curl is not installed" if missing["curl"] else "",
        "pyhttp-pha": "" if ssl.HAS_TLSv1_3 else "no TLS 1.3 in Python's ssl",
        "pyhttp-nopha": "",
        "s_client": "openssl is not installed" if missing["openssl"] or missing["cat"] else "",
    }
