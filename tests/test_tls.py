"""The TLS layer end to end: real clients (openssl s_client, curl, Python's ssl) against a
gateway on a loopback port."""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import ssl
import time

import pytest
from tlsclients import (
    client_context,
    client_hello,
    curl,
    echo_over_tls,
    http_get,
    raw_connect,
    s_client,
    s_client_interactive,
    seconds_until_closed,
    tls_config,
    tls_connect,
)

VERSIONS = ["1.2", "1.3"]
S_CLIENT_VERSION = {"1.2": "-tls1_2", "1.3": "-tls1_3"}
ROOT_DN = "C = US, O = tlsgate, OU = dev, CN = tlsgate dev root CA"


@pytest.fixture
def gw(start_gateway):
    """localhost negotiates, open.localhost asks nothing, required.localhost requires,
    api.localhost has no h2, default asks nothing."""
    return start_gateway(tls_config())


@pytest.fixture
def clean_logs(caplog):
    """Fails the test if the gateway logged an error or a traceback while it ran."""
    caplog.set_level(logging.INFO)
    yield caplog
    problems = [r for r in caplog.records
                if r.levelno >= logging.ERROR or r.exc_info is not None]
    assert not problems, [r.getMessage() for r in problems]
    assert "Traceback" not in caplog.text


def echo(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def still_serving(gw, pki, thumbprints) -> None:
    body = echo(curl(gw.port, pki, cert="client"))
    assert body["client_certificate"]["thumbprint"] == thumbprints["client.pem"]["thumbprint"]


# -- CertificateRequest per hostname ------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_certificate_request_only_where_negotiated(gw, version):
    asked = s_client(gw.port, S_CLIENT_VERSION[version], "-msg", server_name="localhost")
    assert f"<<< TLS 1.{version[-1]}, Handshake" in asked.stdout
    assert re.search(r"<<< TLS 1\.\d, Handshake \[length [0-9a-f]+\], CertificateRequest",
                     asked.stdout), asked.stdout
    # The trusted root is named as an acceptable issuer, so clients pick a fitting certificate.
    names = asked.stdout.split("Acceptable client certificate CA names", 1)[1]
    assert names.splitlines()[1] == ROOT_DN

    not_asked = s_client(gw.port, S_CLIENT_VERSION[version], "-msg",
                         server_name="open.localhost")
    assert "ServerHello" in not_asked.stdout and "Finished" in not_asked.stdout
    assert "CertificateRequest" not in not_asked.stdout
    assert "No client certificate CA names sent" in not_asked.stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_server_name_is_acknowledged(gw, version):
    """RFC 6066 §3: a server that used the client's server name says so in its hello."""
    hello = s_client(gw.port, S_CLIENT_VERSION[version], "-tlsextdebug",
                     server_name="open.localhost")
    assert 'TLS server extension "server name" (id=0), len=0' in hello.stdout, hello.stdout


def test_two_server_names_on_one_port(gw, pki, thumbprints):
    asked = echo(curl(gw.port, pki, host="localhost", cert="client"))
    assert asked["client_certificate"]["thumbprint"] == thumbprints["client.pem"]["thumbprint"]
    assert asked["certificate_origin"] == "handshake"
    assert asked["tls"]["sni"] == "localhost"
    # Same port, same client certificate at hand: never asked for on open.localhost.
    not_asked = echo(curl(gw.port, pki, host="open.localhost", cert="client"))
    assert not_asked["client_certificate"] is None
    assert not_asked["tls"]["sni"] == "open.localhost"


# -- resumption -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_resumed_session_keeps_the_certificate(gw, pki, thumbprints, version):
    ctx = client_context(pki, version=version, cert="client")
    first, session, reused = echo_over_tls(gw.port, ctx)
    assert not reused and first["tls"]["session_resumed"] is False
    second, _, reused = echo_over_tls(gw.port, ctx, session=session)
    assert reused and second["tls"]["session_resumed"] is True
    assert second["tls"]["version"] == f"TLSv{version}"
    assert second["tls"]["sni"] == "localhost"
    assert second["client_certificate"]["thumbprint"] == thumbprints["client.pem"]["thumbprint"]


@pytest.mark.parametrize("version", VERSIONS)
def test_session_from_open_hostname_is_not_resumed_on_negotiate_hostname(gw, pki, version):
    """Security: a session made where no certificate was asked must not resume where one
    is, or the client would skip the CertificateRequest."""
    ctx = client_context(pki, version=version, cert="client")
    first, session, _ = echo_over_tls(gw.port, ctx, "open.localhost")
    assert first["client_certificate"] is None
    # The session is resumable where it was made...
    _, _, reused = echo_over_tls(gw.port, ctx, "open.localhost", session=session)
    assert reused
    # ...but not on localhost: full handshake, and the certificate is asked for.
    second, _, reused = echo_over_tls(gw.port, ctx, "localhost", session=session)
    assert not reused and second["tls"]["session_resumed"] is False
    assert second["client_certificate"] is not None


# -- client_certificate_required -------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_required_without_certificate_fails_with_curl(gw, pki, version):
    flags = ["--tlsv1.2", "--tls-max", "1.2"] if version == "1.2" else ["--tlsv1.3"]
    expected = "alert handshake failure" if version == "1.2" else "alert certificate required"
    # Several times: whether curl gets to read the alert was a race (TLS 1.3 curl sends its
    # request right behind its Finished; closing at once reset the connection under it).
    for _ in range(5):
        result = curl(gw.port, pki, *flags, host="required.localhost")
        assert result.returncode != 0
        assert result.stdout == ""
        assert expected in result.stderr, result.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_required_without_certificate_fails_with_python(gw, pki, version):
    ctx = client_context(pki, version=version)
    # TLS 1.2 fails inside the handshake; in TLS 1.3 the client has sent its Finished
    # before the server's certificate_required alert arrives, so it learns on reading.
    with pytest.raises(ssl.SSLError) as caught, \
            tls_connect(gw.port, ctx, "required.localhost") as tls:
        http_get(tls, host="required.localhost")
    expected = "HANDSHAKE_FAILURE" if version == "1.2" else "CERTIFICATE_REQUIRED"
    assert expected in str(caught.value)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cert", ["client", "client-expired", "client-foreign"])
def test_required_accepts_any_certificate_at_the_tls_layer(gw, pki, thumbprints, version,
                                                            cert):
    flags = ["--tlsv1.2", "--tls-max", "1.2"] if version == "1.2" else ["--tlsv1.3"]
    body = echo(curl(gw.port, pki, *flags, host="required.localhost", cert=cert))
    # Trust and dates are for policies to judge (SPEC §3), not for the handshake.
    assert body["client_certificate"]["thumbprint"] == thumbprints[f"{cert}.pem"]["thumbprint"]
    assert body["tls"]["version"] == f"TLSv{version}"


# -- garbage instead of TLS -------------------------------------------------------------------


def send_and_read_all(port: int, data: bytes) -> tuple[bytes, float]:
    """Send raw bytes; everything the server answers and the seconds until it closed."""
    with raw_connect(port) as sock:
        sock.sendall(data)
        received = b""
        sock.settimeout(3)
        started = time.monotonic()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received, time.monotonic() - started


def test_plain_http_gets_a_readable_400(gw, pki, thumbprints, clean_logs):
    answer, seconds = send_and_read_all(gw.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert seconds < 2                             # closed at once, not at handshake_timeout
    assert answer.startswith(b"HTTP/1.1 400 ")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"https://" in body
    assert int(re.search(rb"(?i)content-length: (\d+)", head).group(1)) == len(body)
    still_serving(gw, pki, thumbprints)


def test_random_bytes_are_dropped(gw, pki, thumbprints, clean_logs):
    junk = random.Random(7).randbytes(1000)
    junk = b"\x00" + junk[1:]                      # not 0x16: cannot be a handshake record
    answer, seconds = send_and_read_all(gw.port, junk)
    assert answer == b"" and seconds < 2
    still_serving(gw, pki, thumbprints)


@pytest.mark.parametrize("junk", [
    b"\x16\x03\x01\x00\x40" + bytes(range(64)),               # record header, then junk
    b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03",           # a ClientHello of 2 bytes
    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",                      # a ServerHello
], ids=["junk", "tiny-hello", "not-a-client-hello"])
def test_junk_after_a_handshake_header_gets_an_alert(gw, pki, thumbprints, clean_logs, junk):
    answer, seconds = send_and_read_all(gw.port, junk)
    assert seconds < 2
    assert answer[:1] == b"\x15" and answer[5:6] == b"\x02"   # one fatal alert, then close
    assert any("TLS failure" in r.getMessage() for r in clean_logs.records)
    still_serving(gw, pki, thumbprints)


def test_hello_then_close_is_not_an_error(gw, pki, thumbprints, clean_logs):
    # Half a ClientHello, then FIN: a port scanner or a client that gave up.
    with raw_connect(gw.port) as sock:
        sock.sendall(client_hello("localhost")[:40])
        sock.shutdown(socket.SHUT_WR)
        assert seconds_until_closed(sock) < 2
    still_serving(gw, pki, thumbprints)


# -- handshake timeout ------------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["nothing", "half-hello", "whole-hello"])
def test_handshake_timeout(start_gateway, pki, thumbprints, clean_logs, sent):
    gw = start_gateway(tls_config(handshake_timeout=0.5))
    hello = client_hello("localhost")
    data = {"nothing": b"", "half-hello": hello[:len(hello) // 2], "whole-hello": hello}[sent]
    with raw_connect(gw.port) as sock:
        if data:
            sock.sendall(data)
        # A whole ClientHello is answered (ServerHello...), then nothing more comes from the
        # client: the server must still give up on the handshake.
        seconds = seconds_until_closed(sock)
    assert 0.3 <= seconds <= 5, seconds
    still_serving(gw, pki, thumbprints)


# -- server names -----------------------------------------------------------------------------


def test_unknown_name_without_default_gets_unrecognized_name(start_gateway, clean_logs):
    gw = start_gateway(tls_config(default=False))
    result = s_client(gw.port, "-msg", server_name="nobody.example")
    assert re.search(r"<<< TLS 1\.\d, Alert \[length 0002\], fatal unrecognized_name",
                     result.stdout), result.stdout
    assert "unrecognized name" in result.stdout
    # No SNI at all is no better without a default entry.
    result = s_client(gw.port, "-msg", server_name=None)
    assert "fatal unrecognized_name" in result.stdout
    # Known names are still served.
    assert "CertificateRequest" in s_client(gw.port, "-msg", server_name="localhost").stdout


def test_server_names_are_case_insensitive(gw):
    result = s_client(gw.port, "-msg", server_name="LocalHost")
    assert "CertificateRequest" in result.stdout


def test_unknown_name_with_default_is_served_by_default(gw, pki):
    # other.localhost is in the server certificate but has no [[hostname]] of its own.
    body = echo(curl(gw.port, pki, host="other.localhost", cert="client"))
    assert body["tls"]["sni"] == "other.localhost"
    assert body["client_certificate"] is None      # default asks for no certificate


# -- protocol versions ------------------------------------------------------------------------


def test_min_tls_13_refuses_tls12_client(start_gateway, pki):
    gw = start_gateway(tls_config('min_tls = "1.3"'))
    result = curl(gw.port, pki, "--tlsv1.2", "--tls-max", "1.2")
    assert result.returncode != 0 and "alert protocol version" in result.stderr, result.stderr
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        tls_connect(gw.port, client_context(pki, version="1.2"))
    assert echo(curl(gw.port, pki))["tls"]["version"] == "TLSv1.3"


def test_max_tls_12_with_a_tls13_client(start_gateway, pki):
    gw = start_gateway(tls_config('max_tls = "1.2"'))
    assert echo(curl(gw.port, pki, "--tlsv1.2"))["tls"]["version"] == "TLSv1.2"
    with tls_connect(gw.port, client_context(pki, max_version="1.3")) as tls:
        assert tls.version() == "TLSv1.2"


# -- renegotiation ----------------------------------------------------------------------------


def test_client_initiated_renegotiation_is_refused(gw, pki, thumbprints, clean_logs):
    request = "GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n"
    output = s_client_interactive(
        gw.port, "-tls1_2", "-msg", "-cert", str(pki / "client.pem"),
        "-key", str(pki / "client.key"), "-CAfile", str(pki / "root.pem"),
        steps=[(0.7, "R\n"), (0.7, request)])
    handshake, _, after = output.partition("RENEGOTIATING")
    assert after, output                                      # s_client did try
    assert len(re.findall(r"\], ServerHello\n", handshake)) == 1
    # The client's new ClientHello is answered with a no_renegotiation warning, never with
    # a ServerHello: s_client then gives up with a fatal alert of its own.
    assert ">>> TLS 1.2, Handshake [length" in after and "ClientHello" in after
    assert "<<< TLS 1.2, Alert [length 0002], warning no_renegotiation" in after
    assert not re.search(r"\], ServerHello\n", after)
    assert ">>> TLS 1.2, Alert [length 0002], fatal handshake_failure" in after
    assert "no renegotiation" in after
    # The gateway sees the client's alert and closes: an INFO line, no error.
    assert any("TLS failure" in r.getMessage() and "handshake failure" in r.getMessage()
               for r in clean_logs.records)
    assert '"client_certificate"' not in after                # the request never got through
    still_serving(gw, pki, thumbprints)


def test_key_update_is_answered(gw, pki, clean_logs):
    # TLS 1.3 KeyUpdate with update_requested: the gateway must send its own KeyUpdate while
    # it reads, then go on serving the connection under the new keys.
    request = "GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    output = s_client_interactive(
        gw.port, "-tls1_3", "-msg", "-CAfile", str(pki / "root.pem"),
        steps=[(0.7, "K\n"), (0.5, request)])
    after = output.partition("KEYUPDATE")[2]
    assert re.search(r">>> TLS 1\.3, Handshake \[length 0005\], KeyUpdate", after), output
    assert re.search(r"<<< TLS 1\.3, Handshake \[length 0005\], KeyUpdate", after), output
    assert "HTTP/1.1 200 OK" in after and '"path": "/echo"' in after


# -- closing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_idle_close_sends_close_notify(start_gateway, pki, version, clean_logs):
    gw = start_gateway(tls_config("idle_timeout = 0.5"))
    ctx = client_context(pki, version=version, cert="client")
    with tls_connect(gw.port, ctx, suppress_ragged_eofs=False, timeout=10) as tls:
        status, _ = http_get(tls, keep_alive=True)
        assert status == 200
        started = time.monotonic()
        # close_notify: recv returns b"" (an EOF without it raises SSLEOFError here).
        assert tls.recv(1024) == b""
        assert 0.2 <= time.monotonic() - started <= 5
        tls.unwrap()                      # the shutdown completes: the server's half is in


def test_idle_close_on_time_just_past_the_handshake_deadline(start_gateway, pki, clean_logs):
    # The handshake's timer fires first (1.2 s) on a connection not yet idle for long: the
    # next check must come at the idle deadline (1.5 s), not a second later.
    gw = start_gateway(tls_config("idle_timeout = 1.5", handshake_timeout=1.2))
    ctx = client_context(pki, cert="client")
    with tls_connect(gw.port, ctx, suppress_ragged_eofs=False, timeout=10) as tls:
        connected = time.monotonic()
        assert tls.recv(1024) == b""
        assert 1.3 <= time.monotonic() - connected < 1.95


def test_idle_checks_do_not_spin_before_a_deadline(start_gateway, pki, clean_logs,
                                                   monkeypatch):
    # uvloop's clock counts whole milliseconds: a check that fires a hair before the idle
    # deadline and re-arms for that same deadline would run again at once, hundreds of
    # times. (A timeout with a sub-millisecond part hits it on most connections.)
    from tlsgate.server.connection import GatewayConnection
    checks: dict[GatewayConnection, int] = {}    # (held: no id is reused meanwhile)
    check = GatewayConnection._on_idle_check

    def counted(connection):
        checks[connection] = checks.get(connection, 0) + 1
        check(connection)
    monkeypatch.setattr(GatewayConnection, "_on_idle_check", counted)
    gw = start_gateway(tls_config("idle_timeout = 0.3005", handshake_timeout=0.2))
    ctx = client_context(pki, cert="client")
    for _ in range(8):
        with tls_connect(gw.port, ctx, suppress_ragged_eofs=False, timeout=10) as tls:
            assert http_get(tls, keep_alive=True)[0] == 200
            assert tls.recv(1024) == b""              # closed once idle
    assert len(checks) == 8 and max(checks.values()) <= 3, sorted(checks.values())


def test_idle_timeout_longer_than_the_handshake_timeout(start_gateway, pki, clean_logs):
    # The handshake's timer goes on as the idle timer: at the handshake deadline an
    # established connection is only checked for idleness, and closes at its own deadline.
    gw = start_gateway(tls_config("idle_timeout = 1.5", handshake_timeout=0.4))
    ctx = client_context(pki, cert="client")
    with tls_connect(gw.port, ctx, suppress_ragged_eofs=False, timeout=10) as tls:
        assert http_get(tls, keep_alive=True)[0] == 200
        time.sleep(0.8)                   # past the handshake deadline, not idle for long
        assert http_get(tls, keep_alive=True)[0] == 200
        last_request = time.monotonic()
        assert tls.recv(1024) == b""      # close_notify once idle for idle_timeout
        assert 1.2 <= time.monotonic() - last_request <= 5


# -- HTTP/2 ALPN ------------------------------------------------------------------------------


@pytest.mark.parametrize("server_name, offer, expected", [
    ("localhost", "foo,h2", "ALPN protocol: h2"),
    ("localhost", "http/1.1,h2", "ALPN protocol: h2"),    # the server's preference wins
    ("localhost", "http/1.1", "ALPN protocol: http/1.1"),
    ("localhost", "foo", "No ALPN negotiated"),           # no overlap: no ALPN, no failure
    ("api.localhost", "h2", "No ALPN negotiated"),
    ("api.localhost", "h2,http/1.1", "ALPN protocol: http/1.1"),
])
def test_alpn_selection(gw, server_name, offer, expected):
    result = s_client(gw.port, "-alpn", offer, server_name=server_name)
    assert expected in result.stdout, result.stdout


def test_http2_alpn_per_hostname(gw, pki):
    h2 = echo(curl(gw.port, pki, "--http2", host="localhost"))
    assert h2["http_version"] == "2" and h2["tls"]["alpn"] == "h2"
    h1 = echo(curl(gw.port, pki, "--http2", host="api.localhost"))
    assert h1["http_version"] == "1.1" and h1["tls"]["alpn"] == "http/1.1"
