"""Connections are freed by reference counting, also when the client leaves mid-request.

With the cyclic garbage collector off, nothing of a connection may stay alive once it has
closed: a reference cycle (the adapter and its sink or body, a task and its stream, a stored
exception and the frames of its traceback) would keep the connection, its OpenSSL object
and its buffers until a collection, and cost the collector's time on every cycle found
(the seed policy's cycles alone cost ~17 µs per connection). The policy engine's side is in
test_seed_policies.py.
"""

from __future__ import annotations

import gc
import json
import time

import pytest
from conftest import READS_CERTIFICATE_POLICY, on_demand_config
from httpclients import H2Client, curl, tls_socket

from tlsgate.http.h1 import H1Connection
from tlsgate.http.h2 import H2Connection
from tlsgate.http.messages import Request, RequestBody
from tlsgate.server.connection import GatewayConnection
from tlsgate.tls.session import TLSSession

KINDS = (GatewayConnection, TLSSession, H1Connection, H2Connection, Request, RequestBody)


def alive() -> dict[str, int]:
    counts = {kind.__name__: 0 for kind in KINDS}
    for obj in gc.get_objects():
        if type(obj) in KINDS:
            counts[type(obj).__name__] += 1
    return counts


def wait_until_closed(gateway) -> None:
    deadline = time.monotonic() + 10
    while gateway.server.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not gateway.server.connections
    time.sleep(0.2)                 # the loop's last callbacks for those connections


def leave_http1_mid_body(gateway, pki, h11_path: bool) -> None:
    with tls_socket(gateway.port, pki) as sock:
        head = b"POST /echo HTTP/1.1\r\nHost: localhost\r\n"
        if h11_path:    # a chunked body: the direct path leaves it to h11
            sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        else:
            sock.sendall(head + b"content-length: 100000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.1)             # the request is being served, its body half read


def leave_http2_mid_body(gateway, pki) -> None:
    client = H2Client(gateway.port, pki)
    client.request("POST", "/echo", b"z" * 1000, end_stream=False,
                   headers=[("content-length", "5000")])
    time.sleep(0.1)
    client.close()


def send_a_malformed_request(gateway, pki) -> None:
    with tls_socket(gateway.port, pki) as sock:   # h11 refuses it: 400, then the close
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n")
        time.sleep(0.1)


def test_a_malformed_request_leaves_no_reference_cycle(gateway, pki):
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            send_a_malformed_request(gateway, pki)
        wait_until_closed(gateway)
        assert alive() == {kind.__name__: 0 for kind in KINDS}
    finally:
        gc.enable()


@pytest.mark.parametrize("leave", ["http1-direct", "http1-h11", "http2"])
def test_a_client_leaving_mid_request_leaves_no_reference_cycle(gateway, pki, leave):
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            if leave == "http2":
                leave_http2_mid_body(gateway, pki)
            else:
                leave_http1_mid_body(gateway, pki, h11_path=leave == "http1-h11")
        wait_until_closed(gateway)
        assert alive() == {kind.__name__: 0 for kind in KINDS}
    finally:
        gc.enable()


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_a_late_certificate_leaves_no_reference_cycle(start_gateway, tmp_path, pki,
                                                      thumbprints, tls):
    """Renegotiation (TLS 1.2) and post-handshake authentication (TLS 1.3), with curl."""
    policy = tmp_path / "reads-certificate.xml"
    policy.write_text(READS_CERTIFICATE_POLICY)
    gateway = start_gateway(on_demand_config(policy))
    version = ["--tls-max", "1.2"] if tls == "1.2" else ["--tlsv1.3"]
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            reply = curl(gateway.port, pki, "--http1.1", *version, "-d", "x" * 100,
                         path="/late")
            echo = json.loads(reply.stdout)
            assert echo["headers"]["x-thumb"] == thumbprints["client.pem"]["thumbprint"]
        wait_until_closed(gateway)
        assert alive() == {kind.__name__: 0 for kind in KINDS}
    finally:
        gc.enable()
