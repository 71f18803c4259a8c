"""TLSSession without sockets: a stdlib ``ssl.SSLObject`` client over memory BIOs talks to it
in memory, so every byte both sides exchange goes through the test."""

from __future__ import annotations

import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tlsclients import Pair, client_context, connect, hello_offers, make_contexts

from tlsgate.certs.identity import thumbprint
from tlsgate.tls.clienthello import NotTLS
from tlsgate.tls.contexts import TLSContexts
from tlsgate.tls.session import (
    ApplicationData,
    PeerClosed,
    TLSError,
    TLSSession,
)

VERSIONS = ["1.2", "1.3"]


@pytest.fixture(scope="module")
def contexts(tmp_path_factory, pki) -> TLSContexts:
    return make_contexts(tmp_path_factory.mktemp("session"), pki)


# -- the handshake ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_negotiate_hostname_gets_the_certificate(contexts, pki, thumbprints, version):
    pair, done = connect(contexts, version, pki=pki, cert="client", alpn=["h2", "http/1.1"])
    assert done.tls_version == f"TLSv{version}"
    assert done.alpn == "h2"
    assert done.server_name == "localhost"
    assert done.host.name == "localhost"
    assert done.session_resumed is False
    assert done.cipher == pair.client.cipher()[0]      # the name both OpenSSLs use
    assert done.client_certificate is not None
    assert thumbprint(done.client_certificate) == thumbprints["client.pem"]["thumbprint"]
    # The chain holds what the client sent besides its leaf: the intermediate.
    assert [c.subject.rfc4514_string() for c in done.client_chain] == \
        ["CN=tlsgate dev intermediate CA,OU=dev,O=tlsgate,C=US"]
    assert pair.client.version() == f"TLSv{version}"


@pytest.mark.parametrize("version", VERSIONS)
def test_negotiate_hostname_without_a_certificate(contexts, pki, version):
    _, done = connect(contexts, version, pki=pki)
    assert done.host.name == "localhost"
    assert done.client_certificate is None and done.client_chain == ()


@pytest.mark.parametrize("version", VERSIONS)
def test_open_hostname_asks_no_certificate(contexts, pki, version):
    # The client has a certificate ready but is never asked for it.
    _, done = connect(contexts, version, "open.localhost", pki=pki, cert="client")
    assert done.host.name == "open.localhost"
    assert done.server_name == "open.localhost"
    assert done.client_certificate is None


@pytest.mark.parametrize("alpn, expected", [(["h2", "http/1.1"], "http/1.1"),
                                            (["http/1.1"], "http/1.1"), (None, None)])
def test_alpn_without_http2(contexts, pki, alpn, expected):
    _, done = connect(contexts, "1.3", "api.localhost", pki=pki, alpn=alpn)
    assert done.alpn == expected


def test_no_sni_selects_default(contexts, pki):
    pair = Pair(contexts, client_context(None, version="1.3", cert=None), server_name=None)
    done = pair.handshake()
    assert done.server_name is None
    assert done.host.name == "default"


def test_unknown_name_with_default(contexts, pki):
    _, done = connect(contexts, "1.3", "nobody.example", pki=None)
    assert done.host.name == "default" and done.server_name == "nobody.example"


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_name_without_default_is_refused(tmp_path, pki, version):
    contexts = make_contexts(tmp_path, pki, default=False)
    pair = Pair(contexts, client_context(None, version=version), "nobody.example")
    with pytest.raises(TLSError):
        pair.handshake()
    # The alert still goes out before the connection is dropped.
    pair.incoming.write(pair.server.data_to_send())
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        pair.client.do_handshake()


@pytest.mark.parametrize("version", VERSIONS)
def test_required_hostname_without_a_certificate_fails(contexts, pki, version):
    pair = Pair(contexts, client_context(pki, version=version), "required.localhost")
    with pytest.raises(TLSError):
        pair.handshake()
    pair.incoming.write(pair.server.data_to_send())
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE"):
        pair.client.do_handshake()
        pair.client.read(10)      # TLS 1.3: the client learns it when it reads


@pytest.mark.parametrize("cert", ["client", "client-expired", "client-foreign",
                                  "client-selfsigned"])
def test_required_hostname_accepts_any_certificate(contexts, pki, thumbprints, cert):
    _, done = connect(contexts, "1.3", "required.localhost", pki=pki, cert=cert)
    assert thumbprint(done.client_certificate) == thumbprints[f"{cert}.pem"]["thumbprint"]


def test_min_tls_13_refuses_a_tls12_client(tmp_path, pki):
    contexts = make_contexts(tmp_path, pki, 'min_tls = "1.3"')
    pair = Pair(contexts, client_context(pki, version="1.2"))
    with pytest.raises(TLSError):
        pair.handshake()


def test_max_tls_12(tmp_path, pki):
    contexts = make_contexts(tmp_path, pki, 'max_tls = "1.2"')
    _, done = connect(contexts, None, pki=pki)
    assert done.tls_version == "TLSv1.2"


# -- resumption ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_resumed_session_keeps_the_certificate(contexts, pki, thumbprints, version):
    ctx = client_context(pki, version=version, cert="client")  # stdlib: one context per session
    first = Pair(contexts, ctx)
    assert first.handshake().session_resumed is False
    first.client_read()                       # TLS 1.3: take the tickets in
    assert first.client.session is not None
    second = Pair(contexts, ctx, session=first.client.session)
    done = second.handshake()
    assert offers_session(second.hello, version, first.client.session)
    # Resumed: no CertificateRequest was sent, the certificate is the session's.
    assert done.session_resumed is True and second.client.session_reused
    assert done.server_name == "localhost" and done.host.name == "localhost"
    assert thumbprint(done.client_certificate) == thumbprints["client.pem"]["thumbprint"]
    # A ticket carries the leaf only: the intermediates come from the first handshake.
    assert done.client_chain == first.events[0].client_chain
    assert [c.subject.rfc4514_string() for c in done.client_chain] == \
        ["CN=tlsgate dev intermediate CA,OU=dev,O=tlsgate,C=US"]


def test_a_returning_client_gets_the_same_objects_and_its_latest_chain(contexts, pki,
                                                                      tmp_path):
    """The certificates a handshake brings are remembered by their DER: the same chain again
    gives the same objects. What a resumption inherits is still the chain of the leaf's
    latest full handshake, also when that was a chain seen before."""
    leaf_only = tmp_path / "leaf-only"
    leaf_only.mkdir()
    pem = (pki / "client.pem").read_text()
    (leaf_only / "client.pem").write_text(pem[:pem.index("-----END CERTIFICATE-----") + 26])
    (leaf_only / "client.key").write_bytes((pki / "client.key").read_bytes())
    (leaf_only / "root.pem").write_bytes((pki / "root.pem").read_bytes())
    with_chain = client_context(pki, version="1.3", cert="client")
    without_chain = client_context(leaf_only, version="1.3", cert="client")

    def full(ctx):
        pair = Pair(contexts, ctx)
        done = pair.handshake()
        pair.client_read()                          # the tickets
        return pair, done

    def resumed_chain(pair):
        again = Pair(contexts, with_chain, session=pair.client.session)
        done = again.handshake()
        assert done.session_resumed
        return done.client_chain

    first_pair, first = full(with_chain)
    _, second = full(with_chain)
    assert second.client_certificate is first.client_certificate
    assert second.client_chain is first.client_chain and len(first.client_chain) == 1
    _, bare = full(without_chain)                   # the same leaf, no intermediate sent
    assert bare.client_certificate is first.client_certificate and bare.client_chain == ()
    assert resumed_chain(first_pair) == ()          # forgotten with the bare handshake
    third_pair, third = full(with_chain)            # the first chain again: remembered again
    assert third.client_chain is first.client_chain
    assert resumed_chain(third_pair) == first.client_chain


def test_a_client_seen_again_is_the_last_to_lose_its_remembered_chain(contexts, pki,
                                                                       monkeypatch):
    # Each full handshake makes the leaf's remembered chain the newest, also when the chain
    # is one seen before: other clients' chains are dropped first.
    from tlsgate.tls import session
    monkeypatch.setattr(session, "_intermediates_sent", {})
    monkeypatch.setattr(session, "_intermediates_bytes", 0)
    monkeypatch.setattr(session, "_INTERNED_MAX", 2)
    ctx = client_context(pki, version="1.3", cert="client")

    def full():
        pair = Pair(contexts, ctx)
        done = pair.handshake()
        pair.client_read()                          # the tickets
        return pair, done

    _, first = full()
    session._remember_intermediates(b"other leaf 1", ("chain 1",), 10)
    pair, _ = full()                                # the same chain: newest again
    session._remember_intermediates(b"other leaf 2", ("chain 2",), 10)   # drops the oldest
    resumed = Pair(contexts, ctx, session=pair.client.session).handshake()
    assert resumed.session_resumed and resumed.client_chain == first.client_chain != ()


def test_remembered_chains_stay_bounded(monkeypatch):
    from tlsgate.tls import session
    monkeypatch.setattr(session, "_chains", {})
    monkeypatch.setattr(session, "_chains_bytes", 0)
    monkeypatch.setattr(session, "_interned", {})
    monkeypatch.setattr(session, "_interned_bytes", 0)
    monkeypatch.setattr(session, "intern_certificate", lambda der: ("parsed", der))
    monkeypatch.setattr(session, "_INTERNED_MAX", 3)
    seen = [session._chain_seen(b"leaf%d" % index + b"chain", [5, 10]) for index in range(5)]
    assert seen[4] == (b"leaf4", ("parsed", b"leaf4"), (("parsed", b"chain"),))
    assert session._chain_seen(b"leaf4chain", [5, 10]) is seen[4]        # remembered
    assert list(session._chains) == [b"leaf2chain", b"leaf3chain", b"leaf4chain"]
    assert session._chains_bytes == 30
    # The leaf repeated in the chain (a resumption path) is not an intermediate.
    assert session._chain_seen(b"leafXleafX", [5, 10])[2] == ()
    monkeypatch.setattr(session, "_INTERN_LARGEST", 2)                  # outsized: not kept
    session._chain_seen(b"leaf9chain", [5, 10])
    assert b"leaf9chain" not in session._chains


@pytest.mark.parametrize("version", VERSIONS)
def test_session_cache_without_tickets_still_resumes_with_the_certificate(
        tmp_path, pki, thumbprints, version):
    contexts = make_contexts(tmp_path, pki, "session_tickets = false")
    ctx = client_context(pki, version=version, cert="client")
    first = Pair(contexts, ctx)
    first.handshake()
    first.client_read()
    second = Pair(contexts, ctx, session=first.client.session)
    done = second.handshake()
    assert done.session_resumed is True
    assert thumbprint(done.client_certificate) == thumbprints["client.pem"]["thumbprint"]
    assert len(done.client_chain) == 1          # the cached session kept the chain
    if version == "1.2":      # no ticket extension answered: the resumption is by session id
        assert first.client.session.has_ticket is False


@pytest.mark.parametrize("version", VERSIONS)
def test_session_never_crosses_hostname_entries(contexts, pki, version):
    ctx = client_context(pki, version=version, cert="client")
    first = Pair(contexts, ctx, "open.localhost")
    assert first.handshake().client_certificate is None
    first.client_read()
    assert first.client.session is not None
    second = Pair(contexts, ctx, "required.localhost", session=first.client.session)
    done = second.handshake()
    assert offers_session(second.hello, version, first.client.session)
    assert done.session_resumed is False and not second.client.session_reused
    assert done.client_certificate is not None       # full handshake: it was asked for


def offers_session(hello: bytes, version: str, session: ssl.SSLSession) -> bool:
    """Whether a ClientHello offers to resume ``session`` (so refusing it means something)."""
    session_id, extensions = hello_offers(hello)
    if version == "1.2":
        return session_id == session.id or 35 in extensions      # id or session ticket
    return 41 in extensions                                      # pre_shared_key


# -- application data and closing -------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_application_data_both_ways(contexts, pki, version):
    pair, _ = connect(contexts, version, pki=pki)
    upload = os.urandom(300_000)                      # many records
    pair.client.write(upload)
    pair.pump()
    received = b"".join(e.data for e in pair.events if isinstance(e, ApplicationData))
    assert received == upload
    download = os.urandom(200_000)
    pair.server.send(download)
    pair.incoming.write(pair.server.data_to_send())
    assert pair.client_read() == download


@pytest.mark.parametrize("version", VERSIONS)
def test_close_notify_from_the_client(contexts, pki, version):
    pair, _ = connect(contexts, version, pki=pki)
    pair.client.write(b"last words")
    try:
        pair.client.unwrap()
    except ssl.SSLWantReadError:
        pass                                          # it waits for ours; we got its alert
    new = pair.pump()
    assert new == [ApplicationData(b"last words"), PeerClosed(clean=True)]
    assert pair.server.next_events() == []            # nothing more after the close


@pytest.mark.parametrize("version", VERSIONS)
def test_eof_without_close_notify(contexts, pki, version):
    pair, _ = connect(contexts, version, pki=pki)
    pair.client.write(b"cut short")
    pair.pump()
    pair.server.receive_data(b"")
    assert pair.server.next_events() == [PeerClosed(clean=False)]


@pytest.mark.parametrize("version", VERSIONS)
def test_eof_in_the_same_read_as_the_last_record_is_still_reported(contexts, pki, version):
    # The read after a record that left nothing to decrypt is skipped, except at EOF.
    pair, _ = connect(contexts, version, pki=pki)
    pair.client.write(b"cut short")
    pair.server.receive_data(pair.outgoing.read())
    pair.server.receive_data(b"")
    assert pair.server.next_events() == [ApplicationData(b"cut short"), PeerClosed(clean=False)]


@pytest.mark.parametrize("version", VERSIONS)
def test_records_arriving_together_or_in_pieces_all_come_out(contexts, pki, version):
    pair, _ = connect(contexts, version, pki=pki)
    for piece in (b"one", b"two", b"three"):
        pair.client.write(piece)                      # a record each
    wire = pair.outgoing.read()
    cut = len(wire) - 7                               # inside the last record
    pair.server.receive_data(wire[:cut])
    assert pair.server.next_events() == [ApplicationData(b"one"), ApplicationData(b"two")]
    assert pair.server.next_events() == []
    pair.server.receive_data(wire[cut:])
    assert pair.server.next_events() == [ApplicationData(b"three")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("piece", [1, 1000, 7777, 16_500, 70_000])
def test_full_records_cut_anywhere_come_out_whole_and_in_order(contexts, pki, version, piece):
    # Whatever the cut, every record comes out whole, once complete: a read sized to the
    # bytes waiting would split a record whose start OpenSSL already holds.
    pair, _ = connect(contexts, version, pki=pki)
    upload = os.urandom(100_000)                      # 16 KiB records
    pair.client.write(upload)
    wire = pair.outgoing.read()
    received = []
    for start in range(0, len(wire), piece):
        pair.server.receive_data(wire[start:start + piece])
        received += [e.data for e in pair.server.next_events() if isinstance(e, ApplicationData)]
    assert b"".join(received) == upload
    assert [len(data) for data in received] == [16384] * 6 + [100_000 - 6 * 16384]


@pytest.mark.parametrize("version", VERSIONS)
def test_server_close_sends_close_notify(contexts, pki, version):
    pair, _ = connect(contexts, version, pki=pki)
    pair.server.close()
    pair.incoming.write(pair.server.data_to_send())
    assert pair.client_read() == b""
    # A clean close: the client saw close_notify, so its own shutdown completes at once.
    pair.client.unwrap()
    pair.server.close()                               # idempotent
    assert pair.server.data_to_send() == b""


def test_eof_before_the_hello_ends(contexts, pki):
    pair = Pair(contexts, client_context(pki))
    try:
        pair.client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = pair.outgoing.read()
    pair.server.receive_data(hello[:50])
    assert pair.server.next_events() == []
    pair.server.receive_data(b"")
    with pytest.raises(TLSError, match="before its ClientHello"):
        pair.server.next_events()


def test_eof_before_any_byte(contexts):
    session = TLSSession(contexts)
    session.receive_data(b"")
    with pytest.raises(TLSError):
        session.next_events()


# -- garbage ---------------------------------------------------------------------------------


def test_plain_http_raises_not_tls(contexts):
    with pytest.raises(NotTLS) as caught:
        TLSSession(contexts).receive_data(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert caught.value.looks_like_http


@pytest.mark.parametrize("junk", [
    b"\x16\x03\x01\x00\x20" + bytes(range(32)),                   # record header, no hello
    b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",      # hello cut short inside
    b"\x16\x03\x01\x00\x04\x01\x00\x00\x00",                      # empty hello body
])
def test_garbage_handshake_raises_tls_error_with_an_alert(contexts, junk):
    session = TLSSession(contexts)
    session.receive_data(junk)
    with pytest.raises(TLSError) as caught:
        session.next_events()
    assert str(caught.value)                                      # a reason to log
    alert = session.data_to_send()
    assert alert[:1] == b"\x15" and alert[5:6] == b"\x02", alert  # a fatal alert record


@pytest.mark.parametrize("version", VERSIONS)
def test_garbage_after_the_handshake(contexts, pki, version):
    pair, _ = connect(contexts, version, pki=pki)
    # An application-data record that does not decrypt.
    pair.server.receive_data(b"\x17\x03\x03\x00\x40" + os.urandom(64))
    with pytest.raises(TLSError, match="(?i)bad record mac|decrypt"):
        pair.server.next_events()


def test_certificate_interning_returns_one_object_and_stays_bounded(pki, monkeypatch):
    """One object per DER (identity-keyed memos downstream depend on it), bounded in bytes,
    and a certificate over the size limit is parsed each time instead of kept."""
    from tlsgate.tls import session
    monkeypatch.setattr(session, "_interned", {})
    monkeypatch.setattr(session, "_interned_bytes", 0)
    ders = [x509.load_pem_x509_certificate((pki / f"{name}.pem").read_bytes())
            .public_bytes(serialization.Encoding.DER)
            for name in ("client", "client-expired", "client-revoked", "client-notyet")]
    first = session.intern_certificate(ders[0])
    assert session.intern_certificate(bytes(ders[0])) is first
    monkeypatch.setattr(session, "_INTERNED_BYTES", len(ders[0]) + len(ders[1]) + 10)
    session.intern_certificate(ders[1])
    session.intern_certificate(ders[2])                 # evicts the oldest to fit
    assert ders[0] not in session._interned and session.intern_certificate(ders[0]) is not first
    assert session._interned_bytes <= session._INTERNED_BYTES
    monkeypatch.setattr(session, "_INTERN_LARGEST", 100)
    assert session.intern_certificate(ders[3]) is not session.intern_certificate(ders[3])
    assert ders[3] not in session._interned


def test_remembered_intermediates_stay_bounded(monkeypatch):
    """The intermediates kept for resumed sessions: newest kept, oldest dropped past the
    entry and byte limits, an outsized chain not kept at all, forgotten after a handshake
    that sent none."""
    from tlsgate.tls import session
    monkeypatch.setattr(session, "_intermediates_sent", {})
    monkeypatch.setattr(session, "_intermediates_bytes", 0)
    monkeypatch.setattr(session, "_INTERNED_MAX", 3)
    monkeypatch.setattr(session, "_INTERNED_BYTES", 1000)
    for index in range(5):
        session._remember_intermediates(b"leaf%d" % index, (f"chain{index}",), 100)
    assert list(session._intermediates_sent) == [b"leaf2", b"leaf3", b"leaf4"]
    session._remember_intermediates(b"leaf2", ("new chain",), 100)    # refreshed: newest
    assert list(session._intermediates_sent) == [b"leaf3", b"leaf4", b"leaf2"]
    assert session._intermediates_sent[b"leaf2"] == (("new chain",), 100)
    session._remember_intermediates(b"big", ("big chain",), 950)      # fits only alone
    assert list(session._intermediates_sent) == [b"big"]
    assert session._intermediates_bytes == 950
    session._remember_intermediates(b"huge", ("huge",), session._INTERN_LARGEST * 4 + 1)
    assert b"huge" not in session._intermediates_sent and session._intermediates_bytes == 950
    session._remember_intermediates(b"big", (), 10)    # a full handshake without a chain
    assert session._intermediates_sent == {} and session._intermediates_bytes == 0
