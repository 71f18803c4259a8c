"""The late certificate request on a TLSSession, in memory: TLS 1.2 renegotiation and TLS 1.3
post-handshake authentication against a real stdlib (OpenSSL) client, no sockets."""

from __future__ import annotations

import ssl

import pytest
from tlsclients import Pair, client_context, make_contexts

from tlsgate.certs.identity import thumbprint
from tlsgate.tls.session import ApplicationData, ClientCertificateReceived


@pytest.fixture(scope="module")
def contexts(tmp_path_factory, pki):
    return make_contexts(tmp_path_factory.mktemp("late"), pki)


def open_pair(contexts, pki, version, *, cert="client", pha=True, host="open.localhost"):
    ctx = client_context(pki, version=version, cert=cert)
    ctx.post_handshake_auth = pha
    pair = Pair(contexts, ctx, host)
    done = pair.handshake()
    assert done.client_certificate is None     # nothing asked in the handshake
    return pair


def client_round(pair: Pair, data: bytes = b"") -> list:
    """The client writes ``data`` and reads whatever the server sent; returns new events."""
    if data:
        pair.client.write(data)
    events = pair.pump()
    for _ in range(5):
        try:
            pair.client.read(65536)
        except ssl.SSLWantReadError:
            pass
        events += pair.pump()
    return events


def received(events) -> list[ClientCertificateReceived]:
    return [e for e in events if isinstance(e, ClientCertificateReceived)]


@pytest.mark.parametrize("version, origin", [("1.2", "renegotiation"),
                                             ("1.3", "post_handshake")])
def test_late_request_gets_the_certificate(contexts, pki, thumbprints, version, origin):
    pair = open_pair(contexts, pki, version)
    assert pair.server.request_client_certificate() is None
    assert pair.server.certificate_request_pending
    events = client_round(pair)
    [answer] = received(events)
    assert answer.origin == origin
    assert thumbprint(answer.certificate) == thumbprints["client.pem"]["thumbprint"]
    assert [c.subject.rfc4514_string() for c in answer.chain] == \
        ["CN=tlsgate dev intermediate CA,OU=dev,O=tlsgate,C=US"]
    assert not pair.server.certificate_request_pending
    # The connection goes on carrying data both ways.
    pair.client.write(b"after")
    assert [e.data for e in pair.pump() if isinstance(e, ApplicationData)] == [b"after"]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_client_without_certificate_answers_null(contexts, pki, version):
    pair = open_pair(contexts, pki, version, cert=None)
    assert pair.server.request_client_certificate() is None
    [answer] = received(client_round(pair))
    assert answer.certificate is None and answer.chain == ()


def test_renegotiation_is_a_full_handshake_even_when_the_client_offers_resumption(
        contexts, pki, thumbprints):
    # A resumed (abbreviated) renegotiation would carry no CertificateRequest.
    pair = open_pair(contexts, pki, "1.2")
    pair.server.request_client_certificate()
    [answer] = received(client_round(pair))
    assert answer.certificate is not None
    assert pair.server.connection.total_renegotiations() == 1


def test_renegotiation_on_a_resumed_connection_is_a_full_handshake_too(contexts, pki,
                                                                       thumbprints):
    # The connection resumed a session without a certificate: the renegotiation must not
    # resume it again (no CertificateRequest then), and its own session, which has the
    # certificate, is the one a next connection resumes.
    ctx = client_context(pki, version="1.2", cert="client")
    first = Pair(contexts, ctx, "open.localhost")
    assert first.handshake().client_certificate is None
    second = Pair(contexts, ctx, "open.localhost", session=first.client.session)
    done = second.handshake()
    assert done.session_resumed and done.client_certificate is None
    second.server.request_client_certificate()
    [answer] = received(client_round(second))
    assert thumbprint(answer.certificate) == thumbprints["client.pem"]["thumbprint"]
    third = Pair(contexts, ctx, "open.localhost", session=second.client.session)
    done = third.handshake()
    assert done.session_resumed
    assert thumbprint(done.client_certificate) == thumbprints["client.pem"]["thumbprint"]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_body_bytes_sent_before_the_answer_arrive_in_order(contexts, pki, version):
    """What the client wrote before it saw the request comes first, then the certificate,
    then what it wrote afterwards: the order the HTTP layer relies on."""
    pair = open_pair(contexts, pki, version)
    pair.server.request_client_certificate()
    pair.client.write(b"body-1")      # in flight before the client reads the request
    events = client_round(pair, b"")
    events += client_round(pair, b"body-2")
    kinds = [("data", e.data) if isinstance(e, ApplicationData) else ("cert", e.origin)
             for e in events]
    assert kinds[0] == ("data", b"body-1")
    assert kinds[1][0] == "cert"
    assert kinds[2:] == [("data", b"body-2")]


def test_tls13_client_without_post_handshake_auth_gets_a_reason(contexts, pki):
    pair = open_pair(contexts, pki, "1.3", pha=False)
    assert pair.server.request_client_certificate() == \
        "client did not offer post-handshake authentication"
    assert not pair.server.certificate_request_pending
    pair.client.write(b"still fine")
    assert [e.data for e in pair.pump() if isinstance(e, ApplicationData)] == [b"still fine"]


def test_hostname_that_negotiates_in_the_handshake_is_not_renegotiated(contexts, pki):
    pair = open_pair(contexts, pki, "1.2", cert=None, host="localhost")
    assert pair.server.request_client_certificate() == \
        "this hostname asks for the certificate in the handshake"


def test_asking_twice_is_refused_once_answered(contexts, pki):
    pair = open_pair(contexts, pki, "1.3")
    assert pair.server.request_client_certificate() is None
    assert pair.server.request_client_certificate() is None      # still pending: same request
    received(client_round(pair))
    assert pair.server.request_client_certificate() == "already asked on this connection"
