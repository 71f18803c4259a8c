"""Smoke test of the peers of ``tlsgate bench --peers`` (tlsgate/bench/peers.py, compare.py).

Each peer starts on loopback, answers a client that presents the dev client certificate, and
REFUSES a client without one and a client whose certificate is revoked — which shows it is
configured like tlsgate (certificate required, chain and CRL checked). ``compare`` then gives a
ratio table. Runs of a fraction of a second; never a speed assertion.

nginx and HAProxy are installed by ``make sysdeps``: missing, they fail the test rather than
skip it. hypercorn and uvicorn are pip-installed into the test environment on first use (they
are no tlsgate dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsgate.bench import compare, load_cli, peers
from tlsgate.bench.load import run_load

QUICK = {"duration": 0.4, "warmup": 0.1, "connections": 2, "streams": 2, "size": 65536}
SERVERS = ("tlsgate", *peers.PEERS)


@pytest.fixture(scope="module")
def backend() -> Iterator[peers.RunningServer]:
    with peers.start_backend() as sink:
        yield sink


@pytest.fixture(scope="module", params=SERVERS)
def server(request, pki: Path, backend: peers.RunningServer) -> Iterator[peers.RunningServer]:
    name = request.param
    why = peers.ensure(name)
    if why is not None:
        if name in ("nginx", "haproxy") or os.environ.get("CI"):
            pytest.fail(f"{why}: `make sysdeps` installs it")
        pytest.skip(why)
    with peers.start_peer(name, pki, backend.port) as running:
        yield running
    assert running.process is None and running.workdir is None   # stopped, files removed


def _get(server: peers.RunningServer, pki: Path, client: str | None) -> bytes:
    """One GET /echo with ``client``'s certificate (None: no certificate); the raw response,
    or b"" when the server refused the client in TLS (alert, reset, close)."""
    context = ssl.create_default_context(cafile=str(pki / "root.pem"))
    if client is not None:
        context.load_cert_chain(pki / f"{client}.pem", pki / f"{client}.key")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                return data
        except (ssl.SSLError, ConnectionError):
            return b""


def test_peer_answers_with_client_certificate(server: peers.RunningServer, pki: Path):
    assert server.pid > 0 and server.url.startswith("https://localhost:")
    assert _get(server, pki, "client").startswith(b"HTTP/1.1 200")
    for mode in ("h1", "handshake"):
        result = run_load(server.path_url(mode), mode, pki=pki, server_pid=server.pid, **QUICK)
        assert result.requests > 0 and result.error_total == 0, result.error_samples
        assert result.tls["version"] == "TLSv1.3"
        assert result.server_cpu_us_per_request is not None


def test_peer_uploads(server: peers.RunningServer, pki: Path):
    result = run_load(server.path_url("upload"), "upload", pki=pki, **QUICK)
    assert result.requests > 0 and result.error_total == 0, result.error_samples


@pytest.mark.parametrize("client", [None, "client-revoked", "client-foreign"])
def test_peer_refuses_clients_tlsgate_refuses(server: peers.RunningServer, pki: Path,
                                              client: str | None):
    response = _get(server, pki, client)
    if server.name == "tlsgate":
        # tlsgate asks for the certificate in the handshake; the seed's policy refuses.
        assert response.startswith(b"HTTP/1.1 403"), response[:80]
    elif server.name == "nginx":
        # ssl_verify_client on: nginx completes the handshake and answers 400 itself.
        assert response.startswith(b"HTTP/1.1 400"), response[:80]
        assert (b"No required SSL certificate was sent" if client is None
                else b"The SSL certificate error") in response
    else:
        # The peers require the certificate (and check chain + CRL) in the TLS handshake.
        assert response == b"", response[:80]


def test_compare_gives_a_ratio_table(pki: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture):
    parser = argparse.ArgumentParser()
    load_cli.add_arguments(parser)
    out = tmp_path / "peers.json"
    args = parser.parse_args([
        "--peers", "nginx", "--mode", "h1", "--rounds", "3", "--duration", "0.3",
        "--warmup", "0.1", "--connections", "2", "--pki", str(pki), "--json", str(out),
        "--no-progress"])
    assert load_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "| h1 | tlsgate |" in printed and "| h1 | nginx |" in printed
    assert "| mode | peer | req/s | server µs/req | per core | target | met |" in printed
    data = json.loads(out.read_text())
    cells = {(c["server"], c["mode"]): c for c in data["cells"]}
    assert len(cells[("tlsgate", "h1")]["runs"]) == 3 == len(cells[("nginx", "h1")]["runs"])
    # interleaved: tlsgate, nginx, tlsgate, nginx, …
    order = sorted((run["sequence"], server) for (server, _), cell in cells.items()
                   for run in cell["runs"])
    assert [server for _, server in order] == ["tlsgate", "nginx"] * 3
    (ratio,) = data["ratios"]
    assert ratio["peer"] == "nginx" and ratio["mode"] == "h1" and ratio["target"] == 0.25
    assert ratio["requests_per_second"] > 0 and ratio["server_cpu_us_per_request"] > 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "chart skipped" in printed
    else:
        assert out.with_suffix(".png").stat().st_size > 0


def test_compare_reports_a_peer_that_cannot_serve_a_mode(pki: Path):
    if peers.ensure("uvicorn") is not None:
        pytest.skip("uvicorn unavailable")
    comparison = compare.compare(["uvicorn"], ["h2"], pki=pki, rounds=1, **QUICK)
    assert comparison.cells[("uvicorn", "h2")].skipped == "uvicorn does not serve h2"
    assert comparison.cells[("tlsgate", "h2")].runs
    assert comparison.ratios() == []
    assert "skipped: uvicorn does not serve h2" in compare.markdown(comparison)


def test_unknown_peer_is_refused(pki: Path):
    with pytest.raises(ValueError, match="unknown peer"):
        compare.compare(["apache"], ["h1"], pki=pki)
