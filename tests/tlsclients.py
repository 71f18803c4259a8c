"""Real TLS clients for the TLS tests: stdlib ssl (sockets and memory BIOs), curl, s_client.

Nothing here fakes TLS: every helper drives a real client implementation against a real
server (a gateway from ``start_gateway``, or a sans-IO :class:`TLSSession` in memory).
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import httpclients
from conftest import SERVER_CERTIFICATE_AND_ROOT, require_tool
from gatewayd import write_config

from tlsgate.config.loader import load_config
from tlsgate.tls.contexts import TLSContexts
from tlsgate.tls.session import HandshakeCompleted, TLSSession

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


# -- ClientHellos made by a real client ----------------------------------------------------


def client_context(pki: Path | None = None, *, version: str | None = None,
                   max_version: str | None = None, cert: str | None = None,
                   alpn: list[str] | None = None) -> ssl.SSLContext:
    """A stdlib client context: trusts the dev root when ``pki`` is given (else verifies
    nothing), pins ``version`` (min = max) or caps ``max_version``, presents ``cert``
    (a PKI file stem such as ``"client"`` or ``"client-expired"``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if pki is not None:
        ctx.load_verify_locations(str(pki / "root.pem"))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[version]
    if max_version is not None:
        ctx.maximum_version = TLS_VERSIONS[max_version]
    if cert is not None:
        assert pki is not None
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_hello(server_name: str | None, *, max_version: str = "1.3") -> bytes:
    """The wire bytes of the ClientHello a stdlib ``ssl.SSLObject`` sends first."""
    ctx = client_context(max_version=max_version)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = outgoing.read()
    assert data[:1] == b"\x16", data[:16]
    return data


def split_records(wire: bytes) -> list[tuple[int, bytes, bytes]]:
    """TLS records as (content type, legacy version, fragment)."""
    records = []
    pos = 0
    while pos < len(wire):
        content_type, version, length = wire[pos], wire[pos + 1:pos + 3], \
            struct.unpack_from("!H", wire, pos + 3)[0]
        records.append((content_type, version, wire[pos + 5:pos + 5 + length]))
        pos += 5 + length
    assert pos == len(wire)
    return records


def record(content_type: int, version: bytes, fragment: bytes) -> bytes:
    return bytes([content_type]) + version + struct.pack("!H", len(fragment)) + fragment


def reframe(wire: bytes, cut: int) -> bytes:
    """The same ClientHello, its handshake message split into two records at ``cut``."""
    [(content_type, version, fragment)] = split_records(wire)
    assert 0 < cut < len(fragment)
    return record(content_type, version, fragment[:cut]) + \
        record(content_type, version, fragment[cut:])


# -- socket clients --------------------------------------------------------------------------


def tls_connect(port: int, ctx: ssl.SSLContext, server_name: str | None = "localhost", *,
                session: ssl.SSLSession | None = None, timeout: float = 5.0,
                suppress_ragged_eofs: bool = True) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(sock, server_hostname=server_name, session=session,
                               suppress_ragged_eofs=suppress_ragged_eofs)
    except BaseException:
        sock.close()
        raise


def http_get(tls: ssl.SSLSocket, path: str = "/echo", host: str = "localhost",
             *, keep_alive: bool = False) -> tuple[int, dict]:
    """One HTTP/1.1 GET over an open TLS socket; (status, JSON body)."""
    connection = "keep-alive" if keep_alive else "close"
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n\r\n"
                .encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        assert chunk, f"connection closed before the response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    assert length is not None, head
    while len(body) < length:
        chunk = tls.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return status, json.loads(body[:length])


def echo_over_tls(port: int, ctx: ssl.SSLContext, server_name: str = "localhost", *,
                  session: ssl.SSLSession | None = None) -> tuple[dict, ssl.SSLSession, bool]:
    """GET /echo on a fresh connection: (echo JSON, the session, whether it was reused)."""
    with tls_connect(port, ctx, server_name, session=session) as tls:
        status, echo = http_get(tls, host=server_name)
        assert status == 200, echo
        # TLS 1.3 tickets arrive after the handshake: reading the response has taken them in.
        return echo, tls.session, tls.session_reused


def raw_connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def seconds_until_closed(sock: socket.socket, limit: float = 10.0) -> float:
    """Block until the server closes (EOF or reset); seconds waited."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


# -- command-line clients ------------------------------------------------------------------


def curl(port: int, pki: Path, *args: str, host: str = "localhost", path: str = "/echo",
         cert: str | None = None) -> subprocess.CompletedProcess:
    """curl for the TLS tests: ``host`` resolved to 127.0.0.1 (so SNI = ``host``), no client
    certificate unless named, text output."""
    return httpclients.curl(port, pki, *args, host=host, path=path, cert=cert, resolve=True,
                            text=True, timeout=10)


def s_client(port: int, *args: str, server_name: str | None = "localhost",
             stdin: str = "", timeout: float = 10.0) -> subprocess.CompletedProcess:
    """``openssl s_client`` with ``stdin`` as its input; stdout and stderr joined.

    Decoding replaces bad bytes: s_client can print raw session bytes (seen: 0xff)."""
    command = [require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}"]
    command += ["-servername", server_name] if server_name else ["-noservername"]
    command += list(args)
    return subprocess.run(command, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace",
                          timeout=timeout, check=False)


# -- a config with one hostname entry per TLS behaviour --------------------------------------

_TLS_CONFIG = """
[gateway]
listen = ["127.0.0.1:0"]
data_dir = "data"
handshake_timeout = @HANDSHAKE_TIMEOUT@
@GATEWAY@
""" + SERVER_CERTIFICATE_AND_ROOT + """
[[hostname]]
name = "localhost"
certificate = "gateway"
negotiate_client_certificate = true

[[hostname]]
name = "open.localhost"
certificate = "gateway"

[[hostname]]
name = "required.localhost"
certificate = "gateway"
negotiate_client_certificate = true
client_certificate_required = true

[[hostname]]
name = "api.localhost"
certificate = "gateway"
negotiate_client_certificate = true
http2 = false
@DEFAULT@

[[api]]
name = "echo"
path = "/echo"
backend = "echo:"
"""

_DEFAULT_HOSTNAME = """
[[hostname]]
name = "default"
certificate = "gateway"
"""


def tls_config(gateway: str = "", *, default: bool = True,
               handshake_timeout: float = 5) -> str:
    """Config text: ``localhost`` negotiates a certificate, ``open.localhost`` asks none,
    ``required.localhost`` requires one, ``api.localhost`` negotiates without h2, and
    ``default`` (optional) asks none. ``gateway`` adds lines to ``[gateway]``."""
    return (_TLS_CONFIG.replace("@GATEWAY@", gateway)
            .replace("@HANDSHAKE_TIMEOUT@", str(handshake_timeout))
            .replace("@DEFAULT@", _DEFAULT_HOSTNAME if default else ""))


def hello_offers(wire: bytes) -> tuple[bytes, set[int]]:
    """The legacy session id and the extension types of a ClientHello (one or more records)."""
    body = b"".join(fragment for _, _, fragment in split_records(wire))[4:]
    pos = 2 + 32
    session_id = body[pos + 1:pos + 1 + body[pos]]
    pos += 1 + body[pos]
    pos += 2 + struct.unpack_from("!H", body, pos)[0]
    pos += 1 + body[pos]
    end = pos + 2 + struct.unpack_from("!H", body, pos)[0]
    pos += 2
    types = set()
    while pos < end:
        ext_type, length = struct.unpack_from("!HH", body, pos)
        types.add(ext_type)
        pos += 4 + length
    return session_id, types


def s_client_interactive(port: int, *args: str, steps: list[tuple[float, str]],
                         server_name: str = "localhost", linger: float = 1.0) -> str:
    """``openssl s_client`` typed at: each step waits ``delay`` seconds, then writes ``text``
    to its stdin (s_client reads commands such as ``R`` from there). stdin stays open until
    ``linger`` seconds after the last step, so s_client does not quit on EOF before the
    server has answered. Returns stdout and stderr joined."""
    command = [require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
               "-servername", server_name, *args]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        for delay, text in steps:
            time.sleep(delay)
            if process.poll() is not None:
                break
            try:
                process.stdin.write(text)
                process.stdin.flush()
            except BrokenPipeError:
                break
        time.sleep(linger)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return output


# -- a TLSSession and a stdlib client wired through memory --------------------------------


def make_contexts(directory: Path, pki: Path, gateway: str = "", *,
                  default: bool = True) -> TLSContexts:
    path = write_config(directory, tls_config(gateway, default=default), pki=pki)
    return TLSContexts(load_config(path))


class Pair:
    """A stdlib client and a TLSSession wired together through memory, no sockets."""

    def __init__(self, contexts: TLSContexts, ctx: ssl.SSLContext,
                 server_name: str | None = "localhost",
                 session: ssl.SSLSession | None = None) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name,
                                   session=session)
        self.server = TLSSession(contexts)
        self.events: list = []
        self.hello = b""                # the client's first flight, as sent

    def pump(self) -> list:
        """Move bytes both ways until neither side has anything to say; new server events."""
        new = []
        for _ in range(100):
            moved = False
            wire = self.outgoing.read()
            if wire and not self.hello:
                self.hello = wire
            if wire:           # b"" would mean "TCP closed" to the session
                self.server.receive_data(wire)
                moved = True
            new += self.server.next_events()
            reply = self.server.data_to_send()
            if reply:
                self.incoming.write(reply)
                moved = True
            if not moved:
                break
        self.events += new
        return new

    def handshake(self) -> HandshakeCompleted:
        for _ in range(20):
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                break
            self.pump()
        else:
            raise AssertionError("the handshake did not finish")
        self.pump()
        done = [e for e in self.events if isinstance(e, HandshakeCompleted)]
        assert len(done) == 1, self.events
        return done[0]

    def client_read(self) -> bytes:
        """Everything the client can decrypt right now."""
        data = b""
        while True:
            try:
                chunk = self.client.read(65536)
            except ssl.SSLWantReadError:
                return data
            if not chunk:
                return data
            data += chunk


def connect(contexts, version, server_name="localhost",
            **client) -> tuple[Pair, HandshakeCompleted]:
    pki = client.pop("pki")
    session = client.pop("session", None)
    pair = Pair(contexts, client_context(pki, version=version, **client), server_name, session)
    return pair, pair.handshake()
