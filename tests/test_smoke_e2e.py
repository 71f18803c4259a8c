"""The gateway end to end with curl: the shortest path a user takes."""

from __future__ import annotations

import json
import subprocess

import httpclients


def curl(gateway, pki, *args: str, path: str = "/echo") -> subprocess.CompletedProcess:
    return httpclients.curl(gateway.port, pki, *args, url=gateway.url(path), cert=None,
                            text=True, timeout=10)


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
