"""On-demand client certificates end to end (SPEC §3): a policy reads
``context.Request.Certificate`` on a hostname whose handshake asked for nothing, and the
gateway fetches it by TLS 1.2 renegotiation or TLS 1.3 post-handshake authentication, with
curl and Python clients, bodies in flight, and each ``on_demand_body`` strategy."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
from pathlib import Path

import pytest
from conftest import SERVER_CERTIFICATE_AND_ROOT
from httpclients import curl, get_with_session, sha256

# The seed's thumbprint policy, verbatim but for its placeholder thumbprint.
SEED_POLICY = Path(__file__).parent.parent / "fixtures" / "policies" / "seed-thumbprint.xml"

CONFIG = """
[gateway]
listen = ["127.0.0.1:0"]
data_dir = "{data}"
{gateway}
""" + SERVER_CERTIFICATE_AND_ROOT + """
[[ca_certificate]]
id = "intermediate"
file = "{pki}/intermediate.pem"
store = "intermediate"

[revocation]
crl_files = ["{pki}/intermediate.crl"]
fetch_distribution_points = false

[[hostname]]
name = "localhost"
certificate = "gateway"
negotiate_client_certificate = false
on_demand_body = "{mode}"
on_demand_timeout = {timeout}
on_demand_buffer_limit = {buffer_limit}
{extra}

[[api]]
name = "echo"
path = "/echo"
backend = "echo:"
policy = "{policy}"
max_body_size = 104857600
"""

MB = 1024 * 1024


@pytest.fixture
def on_demand(start_gateway, tmp_path, thumbprints):
    """``on_demand(mode=..., timeout=...)`` → (gateway, data_dir). ``extra``: lines for the
    hostname entry (or further tables), ``gateway``: lines for ``[gateway]``."""
    def start(mode: str = "spool", *, timeout: float = 10, buffer_limit: int = 131072,
              extra: str = "", gateway: str = ""):
        data = tmp_path / f"data-{mode}"
        data.mkdir(exist_ok=True)
        policy = tmp_path / "policy.xml"
        policy.write_text(SEED_POLICY.read_text().replace(
            "DESIRED-THUMBPRINT-IN-UPPER-CASE", thumbprints["client.pem"]["thumbprint"]))
        text = (CONFIG.replace("{data}", str(data)).replace("{mode}", mode)
                .replace("{timeout}", str(timeout)).replace("{buffer_limit}", str(buffer_limit))
                .replace("{extra}", extra).replace("{policy}", str(policy))
                .replace("{gateway}", gateway))
        return start_gateway(text), data
    return start


def upload(gateway, pki, tmp_path: Path, size: int, *args: str, method: str = "POST"):
    data = os.urandom(size)
    path = tmp_path / f"body-{size}"
    path.write_bytes(data)
    started = time.monotonic()
    result = curl(gateway.port, pki, "--http1.1", "-H", "Expect:", "-X", method,
                  "--data-binary", f"@{path}", "-w", "\n%{http_code}", *args, timeout=30)
    body, _, status = result.stdout.decode().rpartition("\n")
    return int(status or 0), body, sha256(data), time.monotonic() - started, result


@pytest.mark.parametrize("tls", [["--tls-max", "1.2"], ["--tlsv1.3"]], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_spool_serves_a_10mb_upload_with_the_late_certificate(on_demand, pki, tmp_path,
                                                               thumbprints, tls, method,
                                                               caplog):
    caplog.set_level("INFO", logger="tlsgate.spool")
    gateway, data_dir = on_demand("spool")
    status, body, digest, _, result = upload(gateway, pki, tmp_path, 10 * MB, *tls,
                                             method=method)
    assert status == 200, result.stderr
    echo = json.loads(body)
    assert echo["body_sha256"] == digest and echo["body_bytes"] == 10 * MB
    assert echo["client_certificate"]["thumbprint"] == thumbprints["client.pem"]["thumbprint"]
    assert echo["certificate_origin"] in ("renegotiation", "post_handshake")
    # The body that arrived while the handshake was pending went to disk, then was removed.
    assert any("spooled" in r.getMessage() and str(data_dir) in r.getMessage()
               for r in caplog.records)
    assert list(data_dir.glob("tlsgate-spool-*")) == []


def test_stall_small_post_succeeds(on_demand, pki, tmp_path, thumbprints):
    gateway, _ = on_demand("stall")
    status, body, digest, _, result = upload(gateway, pki, tmp_path, 16 * 1024,
                                             "--tls-max", "1.2")
    assert status == 200, result.stderr
    assert json.loads(body)["body_sha256"] == digest


@pytest.mark.parametrize("idle", ["", "idle_timeout = 1"], ids=["default", "idle-1s"])
def test_stall_large_post_freezes_then_403(on_demand, pki, tmp_path, idle):
    """The deadlock: the client's handshake answer is stuck behind its own body. After
    on_demand_timeout the certificate is null and the policy answers 403; curl, which may
    be mid-renegotiation by then, sometimes reports the TLS error instead (as with API
    Management: "freeze, then 403 or a failed request"). An idle_timeout shorter than the
    freeze does not cut it: the client's silence is the gateway's doing (it stopped reading
    and holds the request for the certificate), not a stalled body."""
    gateway, _ = on_demand("stall", timeout=2, gateway=idle)
    status, _, _, elapsed, result = upload(gateway, pki, tmp_path, MB, "--tls-max", "1.2")
    assert elapsed >= 1.9          # the freeze lasts until on_demand_timeout
    assert status == 403 or (status == 0 and b"unexpected record" in result.stderr), \
        result.stderr


def test_buffer_mode_answers_413_above_the_limit(on_demand, pki, tmp_path):
    gateway, _ = on_demand("buffer", buffer_limit=65536)
    status, _, _, _, result = upload(gateway, pki, tmp_path, 100 * 1024, "--tls-max", "1.2")
    assert status == 413, result.stderr
    status, _, _, _, result = upload(gateway, pki, tmp_path, 32 * 1024, "--tls-max", "1.2")
    assert status == 200, result.stderr


def test_http2_gets_http_1_1_required_and_curl_retries(on_demand, pki, thumbprints):
    gateway, _ = on_demand("spool")
    result = curl(gateway.port, pki, "--http2", "-v", "--data-binary", "hello")
    assert result.returncode == 0, result.stderr
    assert b"HTTP_1_1_REQUIRED" in result.stderr
    assert json.loads(result.stdout)["client_certificate"]["thumbprint"] == \
        thumbprints["client.pem"]["thumbprint"]


def test_tls13_client_without_post_handshake_auth_gets_403(on_demand, pki):
    gateway, _ = on_demand("spool")
    context = ssl.create_default_context(cafile=str(pki / "root.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.post_handshake_auth = False
    connection = http.client.HTTPSConnection("localhost", gateway.port, context=context,
                                             timeout=10)
    connection.request("GET", "/echo")
    response = connection.getresponse()
    assert (response.status, response.reason) == (403, "Invalid client certificate")


def test_client_that_never_answers_is_cut_off_and_others_are_served(on_demand, pki,
                                                                     tmp_path):
    gateway, _ = on_demand("spool", timeout=1.5)
    context = ssl.create_default_context(cafile=str(pki / "root.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    import socket
    silent = context.wrap_socket(socket.create_connection(("127.0.0.1", gateway.port)),
                                 server_hostname="localhost")
    # Send a request, then never read: the HelloRequest is never processed.
    silent.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _, _, _, result = upload(gateway, pki, tmp_path, 1024, "--tls-max", "1.2")
    assert status == 200, result.stderr          # served while the other one waits
    time.sleep(2.5)
    silent.settimeout(5)
    data = b""
    try:
        while chunk := silent.recv(65536):
            data += chunk
    except (ssl.SSLError, OSError):
        pass
    assert b" 403 " in data.split(b"\r\n", 1)[0]


def test_expect_100_continue_asks_before_the_body_is_sent(on_demand, pki, tmp_path,
                                                          thumbprints):
    """With Expect: 100-continue nothing is in flight while the certificate is asked for,
    so even stall mode serves a 1 MB body."""
    gateway, _ = on_demand("stall", timeout=5)
    data = os.urandom(MB)
    (tmp_path / "body").write_bytes(data)
    result = curl(gateway.port, pki, "--http1.1", "--tls-max", "1.2", "-H",
                  "Expect: 100-continue", "--expect100-timeout", "10",
                  "--data-binary", f"@{tmp_path / 'body'}", timeout=30)
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["body_sha256"] == sha256(data)
    assert echo["client_certificate"]["thumbprint"] == thumbprints["client.pem"]["thumbprint"]


@pytest.mark.parametrize("tls", [["--tls-max", "1.2"], ["--tlsv1.3"]], ids=["tls1.2", "tls1.3"])
def test_client_without_certificate_answers_empty_and_gets_403(on_demand, pki, tls):
    gateway, _ = on_demand("spool")
    started = time.monotonic()
    result = curl(gateway.port, pki, "--http1.1", *tls, "-w", "%{http_code}", "-o",
                  os.devnull, cert=None)
    assert result.stdout == b"403", result.stderr
    assert time.monotonic() - started < 5      # an empty answer, not a timeout


def test_pipelined_requests_behind_a_renegotiation_run_in_order_with_the_certificate(
        on_demand, pki, thumbprints):
    gateway, _ = on_demand("spool")
    context = ssl.create_default_context(cafile=str(pki / "root.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    import socket
    with context.wrap_socket(socket.create_connection(("127.0.0.1", gateway.port), timeout=10),
                             server_hostname="localhost") as tls:
        tls.sendall(b"".join(
            b"GET /echo?n=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % n for n in range(3)))
        data = b""
        while data.count(b"HTTP/1.1 200") < 3 or not data.rstrip().endswith(b"}"):
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])
              for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert [b["query"] for b in bodies] == ["n=0", "n=1", "n=2"]
    assert {b["client_certificate"]["thumbprint"] for b in bodies} == \
        {thumbprints["client.pem"]["thumbprint"]}


def test_http2_with_on_demand_http2_null_gets_a_null_certificate(on_demand, pki):
    gateway, _ = on_demand("spool", extra='on_demand_http2 = "null"')
    result = curl(gateway.port, pki, "--http2", "-v", "-o", os.devnull, "-w", "%{http_code}")
    assert result.stdout == b"403", result.stderr     # the seed policy: null → 403
    assert b"HTTP_1_1_REQUIRED" not in result.stderr
    assert b"HTTP/2 403" in result.stderr             # answered on HTTP/2 itself


def test_spool_limit_answers_413_and_removes_the_file(on_demand, pki, tmp_path, caplog):
    caplog.set_level("INFO", logger="tlsgate.spool")
    gateway, data_dir = on_demand("spool", extra="on_demand_spool_limit = 1048576")
    status, _, _, _, result = upload(gateway, pki, tmp_path, 3 * MB, "--tls-max", "1.2")
    assert status == 413, result.stderr
    time.sleep(0.2)
    assert list(data_dir.glob("tlsgate-spool-*")) == []    # removed on the error path too
    assert any("spooled" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("tls, origin", [(["--tls-max", "1.2"], "renegotiation"),
                                         (["--tlsv1.3"], "post_handshake")],
                         ids=["tls1.2", "tls1.3"])
def test_later_requests_report_how_the_late_certificate_came(on_demand, pki, thumbprints,
                                                             tls, origin):
    # Two requests on one connection: the first one's policy fetches the certificate late;
    # the second (an API without policy) must not call that certificate "none".
    from policy_support import access_log

    plain = '\n[[api]]\nname = "plain"\npath = "/plain"\nbackend = "echo:"\n'
    gateway, _ = on_demand("spool", extra=plain)
    first = f"https://localhost:{gateway.port}/echo/first"
    with access_log() as log:
        result = curl(gateway.port, pki, "--http1.1", *tls, "-o", os.devnull, first,
                      path="/plain/second")
        assert result.returncode == 0, result.stderr
        echo = json.loads(result.stdout)
        line = log.find("/plain/second")
    assert echo["client_certificate"]["thumbprint"] == thumbprints["client.pem"]["thumbprint"]
    assert echo["certificate_origin"] == origin
    assert line["certificate_origin"] == origin and line["subject"] is not None


def test_a_refused_request_after_a_late_certificate_logs_its_origin(pki):
    # The HTTP layer's own refusals (400, 431...) name the connection's certificate too.
    from cryptography import x509
    from policy_support import access_log

    from tlsgate.http.messages import ConnectionInfo
    from tlsgate.pipeline.access_log import log_refused

    certificate = x509.load_pem_x509_certificate((pki / "client.pem").read_bytes())
    info = ConnectionInfo(("127.0.0.1", 50000), late_origin="renegotiation",
                          late_certificate=certificate)
    with access_log() as log:
        log_refused(info, 400, "BadRequest", http_version="1.1")
        line = log.find(None)
    assert line["certificate_origin"] == "renegotiation"
    assert line["subject"] == "CN=client-valid, OU=dev, O=tlsgate, C=US"
    assert ConnectionInfo(("127.0.0.1", 1)).certificate_origin == "none"


def _get_on(port: int, context: ssl.SSLContext, path: str,
            session: ssl.SSLSession | None = None) -> tuple[dict, ssl.SSLSession, bool]:
    """The echo of a GET on a new connection offering ``session``, the connection's latest
    session and whether it resumed."""
    answer, latest, resumed = get_with_session(port, context, path, session)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    return json.loads(body), latest, resumed


@pytest.mark.parametrize("tickets", ["true", "false"])
def test_tls12_session_with_a_renegotiated_certificate_resumes_with_it(on_demand, pki, tickets):
    # SPEC §3: a resumed session keeps the certificate of the session it resumes, also the
    # one a renegotiation made; the next connection needs no renegotiation then.
    gateway, _ = on_demand("spool", gateway=f"session_tickets = {tickets}")
    context = ssl.create_default_context(cafile=str(pki / "root.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    echo, session, resumed = _get_on(gateway.port, context, "/echo/first")
    assert echo["certificate_origin"] == "renegotiation" and not resumed
    echo, _, resumed = _get_on(gateway.port, context, "/echo/second", session)
    assert resumed and echo["tls"]["session_resumed"]
    assert echo["certificate_origin"] == "handshake"
    assert echo["client_certificate"]["subject"] == "CN=client-valid, OU=dev, O=tlsgate, C=US"
