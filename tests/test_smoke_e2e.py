"""The gateway end to end with curl: the shortest path a user takes."""

from __future__ import annotations

import json
import subprocess

from conftest import require_tool


def curl(gateway, pki, *args: str, path: str = "/echo") -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("curl"), "-sS", "--max-time", "10", "--cacert", str(pki / "root.pem"),
         *args, gateway.url(path)],
        capture_output=True, text=True, timeout=20)


def test_curl_http11_with_client_certificate(gateway, pki, thumbprints):
    result = curl(gateway, pki, "--http1.1", "--cert", str(pki / "client.pem"),
                  "--key", str(pki / "client.key"))
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["http_version"] == "1.1"
    assert echo["client_certificate"]["thumbprint"] == thumbprints["client.pem"]["thumbprint"]
    assert echo["certificate_origin"] == "handshake"


def test_curl_http2_with_client_certificate(gateway, pki, thumbprints):
    result = curl(gateway, pki, "--http2", "--cert", str(pki / "client.pem"),
                  "--key", str(pki / "client.key"), "--data-binary", "hello")
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["http_version"] == "2"
    assert echo["body_bytes"] == 5
    assert echo["client_certificate"]["thumbprint"] == thumbprints["client.pem"]["thumbprint"]
