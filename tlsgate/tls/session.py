"""A server-side TLS session over memory BIOs: no sockets, no event loop.

Theory of operation
-------------------
OpenSSL reads ciphertext from one memory BIO and writes ciphertext to another; this class owns
both and exposes the TLS connection as a pure state machine, in the style of h11:

* ``receive_data(wire_bytes)`` hands ciphertext from the network to OpenSSL;
  ``receive_data(b"")`` says the peer closed its side of the TCP connection. The first bytes
  are held back until the ClientHello is complete: its server name decides which hostname
  context the OpenSSL connection is created on (see :mod:`tlsgate.tls.clienthello`).
* ``next_events()`` lets OpenSSL make progress with what it has — finish the handshake,
  decrypt records (not while ``reading_paused``) — and returns what happened, in order:
  :class:`HandshakeCompleted`, :class:`ApplicationData`, :class:`ClientCertificateReceived`,
  :class:`PeerClosed`. It raises :class:`TLSError` when the peer
  broke the protocol (garbage instead of a ClientHello, bad alert, failed handshake).
* ``send(plaintext)`` encrypts; ``close()`` writes close_notify.
* ``data_to_send()`` drains the ciphertext OpenSSL produced — after *every* call above, since
  even reading can produce output (handshake messages, alerts, TLS 1.3 session tickets,
  key-update answers). The I/O layer must send it, also right before it drops a connection
  after a TLSError, so the client sees the alert.

OpenSSL's "want read" is not an error here: it only means that ``next_events()`` has done all it
can until more wire bytes arrive. Because both BIOs are memory BIOs, "want write" never happens.

Decrypting loops over ``SSL_read`` until OpenSSL wants more ciphertext, so one call costs a few
Python-level calls per TLS record, not per byte, and each record's plaintext is passed on
without further copies.

The hot calls (``SSL_read``, ``SSL_write``, ``BIO_read``, ``BIO_write``, ``SSL_do_handshake``)
go straight to OpenSSL through pyOpenSSL's cffi bindings instead of its ``Connection``
methods: "want read" is then a return code, not an exception raised and caught once or twice
per request. Every other outcome is handed to pyOpenSSL's own error translation
(``_raise_ssl_error``), so errors surface exactly as pyOpenSSL raises them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import exception_from_error_queue as _error_queue
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from tlsgate.tls.clienthello import ClientHelloReader
from tlsgate.tls.contexts import HostTLS, TLSContexts, accept_any_certificate

_RECORD_SIZE = 16384          # the largest plaintext of a TLS record
_IDLE_READ_SIZE = 1024
_WANT_READ = _lib.SSL_ERROR_WANT_READ
# OpenSSL's SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION (bit 16), which pyOpenSSL does not
# export.
_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION = 0x00010000
_allocate = _ffi.new_allocator(should_clear_after_alloc=False)   # as pyOpenSSL's reads do


@dataclass(slots=True)
class HandshakeCompleted:
    """The initial handshake finished; the fields describe the negotiated session."""

    tls_version: str
    cipher: str
    alpn: str | None
    server_name: str | None
    host: HostTLS
    session_resumed: bool
    client_certificate: x509.Certificate | None
    client_chain: tuple[x509.Certificate, ...] = field(default=())


@dataclass(slots=True)
class ApplicationData:
    data: bytes


@dataclass(slots=True)
class PeerClosed:
    """The peer sent close_notify, or closed TCP (``clean`` is False then)."""

    clean: bool


@dataclass(slots=True)
class ClientCertificateReceived:
    """The late certificate request (see :meth:`TLSSession.request_client_certificate`)
    ended: ``certificate`` is None when the client answered without one or refused."""

    certificate: x509.Certificate | None
    chain: tuple[x509.Certificate, ...]
    origin: str                  # "renegotiation" | "post_handshake"


class TLSError(Exception):
    """The TLS conversation failed; ``str()`` is OpenSSL's reason, safe to log."""


TLSEvent = HandshakeCompleted | ApplicationData | PeerClosed | ClientCertificateReceived


class TLSSession:
    """One server-side TLS connection as a sans-IO state machine (see the module doc)."""

    def __init__(self, contexts: TLSContexts) -> None:
        self._contexts = contexts
        self._hello: ClientHelloReader | None = ClientHelloReader()
        self._conn: SSL.Connection | None = None
        self._eof = False
        self.handshake_complete = False
        self.closed = False          # we sent close_notify
        self.peer_closed = False
        self.host: HostTLS | None = None
        self._server_name: str | None = None   # SNI read from the ClientHello
        self._late: _LateRequest | None = None  # a certificate request in flight
        # While True, next_events() decrypts nothing more: records stay encrypted in the
        # input BIO, and so does whatever follows them (a handshake message included).
        self.reading_paused = False

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Ciphertext from the peer; ``b""`` when the peer closed TCP.

        Raises :class:`~tlsgate.tls.clienthello.NotTLS` when the first bytes are no TLS.
        """
        if self._hello is not None:
            if not data:
                self._eof = True
            elif self._hello.feed(data):
                self._start_connection()
            return
        if data:
            _write_ciphertext(self._conn, data)
        else:
            self._eof = True
            self._conn.bio_shutdown()

    def _start_connection(self) -> None:
        """The ClientHello is in: create the connection on the selected hostname's context."""
        hello, self._hello = self._hello, None
        self._server_name = hello.server_name
        self._conn, self.host = self._contexts.new_connection(hello.server_name)
        _write_ciphertext(self._conn, bytes(hello.buffered))

    def next_events(self) -> list[TLSEvent]:
        events: list[TLSEvent] = []
        if self.peer_closed:
            return events
        if self._conn is None:
            if self._eof:
                raise TLSError("peer closed the connection before its ClientHello ended")
            return events
        if not self.handshake_complete:
            if not self._advance_handshake():
                return events
            events.append(self._handshake_completed())
        self._read_records(events)
        return events

    def _advance_handshake(self) -> bool:
        conn = self._conn
        result = _lib.SSL_do_handshake(conn._ssl)
        if result == 1:
            self.handshake_complete = True
            return True
        try:
            _raise_unless_want_read(conn, result)
        except SSL.ZeroReturnError:
            raise TLSError("peer closed the connection during the handshake") from None
        except SSL.SysCallError as exc:
            raise TLSError(_syscall_reason(exc, "during the handshake")) from None
        except SSL.Error as exc:
            raise TLSError(_openssl_reason(exc)) from None
        return False

    def _handshake_completed(self) -> HandshakeCompleted:
        conn = self._conn
        resumed = _lib.SSL_session_reused(conn._ssl) == 1
        certificate, chain = _peer_certificates(conn, from_session=resumed)
        # The name read from the ClientHello, which chose the context. Not OpenSSL's
        # get_servername(): on a resumed TLS 1.2 session that returns the session's name,
        # which OpenSSL only stores when a servername callback accepted it (none does here),
        # so it would be None and a resumed connection would look like one without SNI.
        server_name = self._server_name
        if server_name is None:
            raw = conn.get_servername()
            server_name = raw.decode("ascii", "replace") if raw else None
        return HandshakeCompleted(
            tls_version=_version_name(conn),
            cipher=_cipher_name(conn),
            alpn=_alpn_name(conn),
            server_name=server_name,
            host=self.host,
            session_resumed=resumed,
            client_certificate=certificate,
            client_chain=chain,
        )

    def _read_records(self, events: list[TLSEvent]) -> None:
        """Decrypt record by record, stopping as soon as the reader pauses (checked between
        records, so a pause takes effect within one record of 16 KiB at most)."""
        conn = self._conn
        ssl = conn._ssl
        incoming = conn._into_ssl
        while not self.reading_paused:
            try:
                # One SSL_read gives at most one record's plaintext (16 KiB): a buffer that
                # size, or a small one when nothing waits (the read then only reports "want
                # read" or the close). Not the bytes waiting: OpenSSL may already hold the
                # start of the record, which would then come out in two pieces. Not 64 KiB
                # either: freeing a chunk that large made glibc consolidate its free lists.
                wanted = _RECORD_SIZE if _lib.SSL_pending(ssl) or \
                    _lib.BIO_get_mem_data(incoming, _ffi.NULL) else _IDLE_READ_SIZE
                buffer = _allocate("char[]", wanted)
                size = _lib.SSL_read(ssl, buffer, wanted)
                if size <= 0:
                    _raise_unless_want_read(conn, size)
                    return
                data = _ffi.buffer(buffer, size)[:]
                # Nothing left to decrypt (OpenSSL reads a record's exact length, no
                # read-ahead): the read that would only say so is skipped. Not at EOF:
                # that read reports the close.
                drained = not self._eof and _lib.SSL_pending(ssl) == 0 and \
                    _lib.BIO_get_mem_data(incoming, _ffi.NULL) == 0
            except SSL.ZeroReturnError:
                self.peer_closed = True
                events.append(PeerClosed(clean=True))
                return
            except SSL.SysCallError as exc:
                if exc.args and exc.args[0] == -1:
                    # EOF without close_notify: common (curl, browsers); not an attack here
                    # because HTTP framing tells whether a message was complete.
                    self.peer_closed = True
                    events.append(PeerClosed(clean=False))
                    return
                raise TLSError(_syscall_reason(exc, "while reading")) from None
            except SSL.Error as exc:
                raise TLSError(_openssl_reason(exc)) from None
            finally:
                # The handshake ran inside this recv(): what it returned came after it.
                late = self._late
                if late is not None and late.finished and not late.reported:
                    events.append(self._late_outcome())
            events.append(ApplicationData(data))
            if drained:
                return

    # -- the late certificate request ----------------------------------------------------

    def request_client_certificate(self) -> str | None:
        """Ask the client for its certificate now, after the handshake.

        TLS 1.2: a server-initiated renegotiation, forced to be a full handshake (see
        ``_start_renegotiation``). TLS 1.3: post-handshake authentication, which only works
        when the client offered it (``post_handshake_auth``).

        Returns None when the request went out (the answer arrives as a
        :class:`ClientCertificateReceived` event among the application data, in wire
        order), or why it cannot be asked, e.g. ``"client did not offer post-handshake
        authentication"``: the certificate is then null.

        Completion is detected from OpenSSL's state machine passing "read finished" (the
        client's Finished message) after the request. ``renegotiate_pending()`` and
        HANDSHAKE_DONE are not used: both report "done" already when the HelloRequest is
        written, and TLS 1.3 post-handshake authentication reports no HANDSHAKE_DONE at all.
        """
        conn = self._conn
        if conn is None or not self.handshake_complete or self.closed or self.peer_closed:
            return "the connection is not established"
        if self._late is not None:
            return None if not self._late.finished else "already asked on this connection"
        tls13 = _version_name(conn) == "TLSv1.3"
        self._late = _LateRequest("post_handshake" if tls13 else "renegotiation")
        conn.set_info_callback(self._late.on_info)
        reason = _start_post_handshake_auth(conn) if tls13 else self._start_renegotiation()
        if reason is not None:
            self._late = None
            return reason
        try:
            conn.do_handshake()      # writes the HelloRequest / CertificateRequest
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            raise TLSError(_openssl_reason(exc)) from None
        return None

    @property
    def certificate_request_pending(self) -> bool:
        return self._late is not None and not self._late.reported

    def _start_renegotiation(self) -> str | None:
        conn = self._conn
        if self.host is None or self.host.settings.negotiate_client_certificate:
            return "this hostname asks for the certificate in the handshake"
        # The client's new ClientHello offers to resume its session, and a resumed handshake
        # carries no CertificateRequest: this renegotiation refuses resumption. The session
        # it makes keeps the hostname's session id context, so a later connection resumes it
        # with the certificate (SPEC §3) instead of renegotiating again.
        _lib.SSL_set_options(conn._ssl, _OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION)
        _lib.SSL_set_verify(conn._ssl, SSL.VERIFY_PEER, accept_any_certificate)
        if not conn.renegotiate():
            return "a renegotiation is already pending"
        return None

    def _late_outcome(self) -> ClientCertificateReceived:
        late = self._late
        late.reported = True
        conn = self._conn
        # A certificate exchange of its own, even on a resumed connection (TLS 1.3
        # post-handshake authentication): what the client sent now is the chain.
        certificate, chain = (None, ()) if late.declined else \
            _peer_certificates(conn, from_session=False)
        return ClientCertificateReceived(certificate, chain, late.origin)

    # -- output ---------------------------------------------------------------------------

    def send(self, data: bytes | memoryview) -> None:
        """Encrypt application data (all of it: memory BIOs never push back)."""
        conn = self._conn
        size = len(data)
        if not size:
            return
        with _ffi.from_buffer(data) as pointer:
            written = _lib.SSL_write(conn._ssl, pointer, size)
        if written == size:
            return
        try:
            # Not expected on memory BIOs: pyOpenSSL writes the rest, or raises what failed.
            conn.sendall(memoryview(data)[max(written, 0):])
        except SSL.Error as exc:
            raise TLSError(_openssl_reason(exc)) from None

    def close(self) -> None:
        """Write close_notify (once). The peer's close_notify is not awaited."""
        if self.closed:
            return
        self.closed = True
        if not self.handshake_complete or self._conn is None:
            return
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass  # the peer may already be gone; nothing to tell it then

    def data_to_send(self) -> bytes:
        if self._conn is None:
            return b""
        bio = self._conn._from_ssl
        pending = _lib.BIO_get_mem_data(bio, _ffi.NULL)     # bytes waiting in the memory BIO
        if pending <= 0:
            return b""
        buffer = _allocate("char[]", pending)
        size = _lib.BIO_read(bio, buffer, pending)
        return _ffi.buffer(buffer, size)[:] if size > 0 else b""

    @property
    def connection(self) -> SSL.Connection | None:
        """The pyOpenSSL connection, for the on-demand certificate machinery."""
        return self._conn


# What a handshake negotiated, read straight from OpenSSL and named from small tables (the
# values repeat on every connection). pyOpenSSL's getters decode C strings each time: ~12 µs
# per handshake in bench/handshake_eval.py, these ~6 (right after a handshake, which has
# pushed Python's data out of the CPU caches, every call costs several times what it does
# in a loop).
_VERSION_NAMES = {0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
_cipher_names: dict[object, str] = {}     # OpenSSL's (static) SSL_CIPHER -> its name


def _version_name(conn: SSL.Connection) -> str:
    name = _VERSION_NAMES.get(_lib.SSL_version(conn._ssl))
    return name if name is not None else conn.get_protocol_version_name()


def _cipher_name(conn: SSL.Connection) -> str:
    cipher = _lib.SSL_get_current_cipher(conn._ssl)
    if cipher == _ffi.NULL:
        return ""
    name = _cipher_names.get(cipher)
    if name is None:
        name = _ffi.string(_lib.SSL_CIPHER_get_name(cipher)).decode("ascii", "replace")
        if len(_cipher_names) < 256:        # a table in OpenSSL: a few dozen at most
            _cipher_names[cipher] = name
    return name


def _alpn_name(conn: SSL.Connection) -> str | None:
    data = _ffi.new("unsigned char **")
    length = _ffi.new("unsigned int *")
    _lib.SSL_get0_alpn_selected(conn._ssl, data, length)
    if not length[0]:
        return None
    return _ffi.buffer(data[0], length[0])[:].decode("ascii", "replace")


def _write_ciphertext(conn: SSL.Connection, data: bytes) -> None:
    """Into OpenSSL's input BIO, without pyOpenSSL's wrapper (its checks, per read)."""
    if _lib.BIO_write(conn._into_ssl, data, len(data)) <= 0:
        conn.bio_write(data)     # cannot fail on a memory BIO; pyOpenSSL explains if so


def _raise_unless_want_read(conn: SSL.Connection, result: int) -> None:
    """After an SSL_* call returned ``result`` <= 0: return if OpenSSL only wants more
    ciphertext, else raise what pyOpenSSL's own method would have raised."""
    if _lib.SSL_get_error(conn._ssl, result) != _WANT_READ:
        conn._raise_ssl_error(conn._ssl, result)
        raise SSL.Error([("tlsgate", "", f"SSL call returned {result} without an error")])


def _openssl_reason(exc: SSL.Error) -> str:
    """OpenSSL's error queue as one line, e.g. 'wrong version number'."""
    reasons = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else ():
        if isinstance(item, tuple) and len(item) == 3:
            reasons.append(str(item[2]))
    return ", ".join(reasons) or str(exc) or exc.__class__.__name__


def _syscall_reason(exc: SSL.SysCallError, when: str) -> str:
    if exc.args and exc.args[0] == -1:
        return f"unexpected EOF {when}"
    return f"{exc} {when}"


_ALERT_NO_RENEGOTIATION = 100
_READ_FINISHED = b"SSLv3/TLS read finished"


class _LateRequest:
    """Watches OpenSSL's info callback while a late certificate request is in flight."""

    __slots__ = ("origin", "finished", "declined", "reported")

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.finished = False    # the client's Finished was read, or it refused
        self.declined = False
        self.reported = False

    def on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if self.finished:
            return
        if where & SSL.SSL_CB_LOOP and conn.get_state_string() == _READ_FINISHED:
            self.finished = True
        elif where & SSL.SSL_CB_READ_ALERT and ret & 0xFF == _ALERT_NO_RENEGOTIATION:
            # A TLS 1.2 client that will not renegotiate says so with a warning alert.
            self.finished = self.declined = True


def _start_post_handshake_auth(conn: SSL.Connection) -> str | None:
    """Queue a TLS 1.3 post-handshake CertificateRequest (pyOpenSSL has no method for it)."""
    _lib.SSL_set_verify(conn._ssl, SSL.VERIFY_PEER, accept_any_certificate)
    if _lib.SSL_verify_client_post_handshake(conn._ssl) == 1:
        return None
    try:
        _error_queue(SSL.Error)
    except SSL.Error as exc:
        reason = _openssl_reason(exc)
    if "extension not received" in reason:
        return "client did not offer post-handshake authentication"
    return f"post-handshake authentication refused: {reason}"


def _peer_certificates(conn: SSL.Connection, *, from_session: bool
                       ) -> tuple[x509.Certificate | None, tuple[x509.Certificate, ...]]:
    """The client's certificate and the intermediates it sent, as interned objects.
    ``from_session``: the certificate came with a resumed session rather than a certificate
    exchange (whose chain is then remembered for the leaf's resumptions).

    Read straight from OpenSSL: every certificate encoded into one memory BIO and copied out
    in one piece, which is also the key of a memo of what that exact chain gives (a
    returning client's next handshake skips cutting, interning and remembering it).
    pyOpenSSL's ``get_peer_certificate`` and ``dump_certificate`` would wrap each
    certificate in an object and a BIO of its own."""
    peer = _lib.SSL_get_peer_certificate(conn._ssl)       # a new reference
    if peer == _ffi.NULL:
        return None, ()
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if bio == _ffi.NULL:
        _lib.X509_free(peer)
        raise MemoryError("BIO_new failed")
    try:
        ends = [_encode_certificate(bio, peer)]             # where each encoding ends
        # OpenSSL's server-side chain omits the leaf except on resumption paths: keep only
        # the intermediates the client sent.
        stack = _lib.SSL_get_peer_cert_chain(conn._ssl)   # borrowed
        for index in range(0 if stack == _ffi.NULL else _lib.sk_X509_num(stack)):
            ends.append(_encode_certificate(bio, _lib.sk_X509_value(stack, index)))
        encoded = _bio_contents(bio)
    finally:
        _lib.BIO_free(bio)
        _lib.X509_free(peer)
    leaf, certificate, intermediates = _chain_seen(encoded, ends)
    if not from_session:
        remembered = _intermediates_sent.get(leaf)
        if remembered is None or remembered[0] is not intermediates:
            _remember_intermediates(leaf, intermediates, len(encoded))
        else:
            _keep_newest(leaf)
    elif not intermediates:
        remembered = _intermediates_sent.get(leaf)
        if remembered is not None:
            intermediates = remembered[0]
    return certificate, intermediates


def _chain_seen(encoded: bytes, ends: list[int]
                ) -> tuple[bytes, x509.Certificate, tuple[x509.Certificate, ...]]:
    """(leaf DER, leaf, intermediates) of the certificates ``encoded`` holds one after the
    other (``ends``: where each ends), remembered by those bytes; bounded like
    :func:`intern_certificate`."""
    global _chains_bytes
    known = _chains.get(encoded)
    if known is not None:
        return known
    leaf = encoded[:ends[0]]
    chain = [der for der in (encoded[start:end] for start, end in zip(ends[:-1], ends[1:],
                                                                       strict=True))
             if der != leaf]
    known = (leaf, intern_certificate(leaf), tuple(map(intern_certificate, chain)))
    if len(encoded) <= _INTERN_LARGEST * 4:
        with _memo_lock:
            _chains_bytes = _make_room(_chains, _chains_bytes, len(encoded)) + len(encoded)
            _chains[encoded] = known
    return known


def _remember_intermediates(leaf: bytes, intermediates: tuple[x509.Certificate, ...],
                            size: int) -> None:
    """Keep the intermediates a client sent with ``leaf`` (DER) in its latest full handshake,
    for its resumed sessions (none sent: any kept before are forgotten, so a resumption
    verifies like the handshake before it).

    A session resumed from a ticket holds the client's leaf certificate but not the chain it
    sent (OpenSSL serializes the leaf only), and ``Verify()`` builds paths with the chain the
    client sent: without this, a client whose intermediates are not in the store would pass
    on its first connection and fail on every resumed one. Only the key's holder can make a
    full handshake with ``leaf``, and intermediates are untrusted path-building input, so
    remembering them grants nothing. Bounded like the interned certificates (``size``: the
    DER bytes of leaf and chain). Per process: a ticket resumed on another worker than the
    one that saw the chain still comes without it (README: keep intermediates in the store
    when ``workers > 1``)."""
    global _intermediates_bytes
    with _memo_lock:
        previous = _intermediates_sent.pop(leaf, None)      # re-inserted below: newest last
        if previous is not None:
            _intermediates_bytes -= previous[1]
        if not intermediates or size > _INTERN_LARGEST * 4:
            return                              # nothing to keep, or an outsized chain
        _intermediates_bytes = _make_room(_intermediates_sent, _intermediates_bytes, size,
                                          _entry_size)
        _intermediates_sent[leaf] = (intermediates, size)
        _intermediates_bytes += size


def _keep_newest(leaf: bytes) -> None:
    """A full handshake sent the chain remembered for ``leaf`` again: it becomes the newest
    entry (the oldest are dropped first), as :func:`_remember_intermediates` would make it."""
    with _memo_lock:
        entry = _intermediates_sent.pop(leaf, None)
        if entry is not None:
            _intermediates_sent[leaf] = entry


def _encode_certificate(bio, certificate) -> int:
    """Append ``certificate``'s DER encoding to the memory ``bio``; the bytes it now holds."""
    if _lib.i2d_X509_bio(bio, certificate) != 1:
        _lib.ERR_clear_error()
        raise TLSError("could not encode the client certificate")
    return _lib.BIO_get_mem_data(bio, _ffi.NULL)


def _bio_contents(bio) -> bytes:
    """What the memory ``bio`` holds, copied out once (read in place: no BIO_read)."""
    data = _ffi.new("char **")
    size = _lib.BIO_get_mem_data(bio, data)
    return _ffi.buffer(data[0], size)[:]


def intern_certificate(der: bytes) -> x509.Certificate:
    """One ``x509.Certificate`` object per certificate seen recently.

    Every connection of a client brings the same DER bytes; returning the same object
    makes the identity-keyed memos downstream (names, ``Verify()`` fingerprints, policy
    views) hit from a returning client's second connection on, and a dict lookup by DER
    is cheaper than parsing it again. Bounded in entries and in bytes (any client may
    present any certificate: the TLS layer accepts all, policies judge them); a certificate
    larger than _INTERN_LARGEST is parsed each time instead."""
    global _interned_bytes
    certificate = _interned.get(der)
    if certificate is not None:
        return certificate
    certificate = x509.load_der_x509_certificate(der)
    if len(der) > _INTERN_LARGEST:
        return certificate
    with _memo_lock:
        _interned_bytes = _make_room(_interned, _interned_bytes, len(der)) + len(der)
        _interned[der] = certificate
    return certificate


def _make_room(memo: dict[bytes, object], total: int, adding: int,
               size: Callable[[bytes, object], int] = lambda key, _: len(key)) -> int:
    """Drop the oldest entries of ``memo`` (``total`` bytes, an entry's ``size(key, value)``:
    its DER key's length by default) until one more of ``adding`` bytes fits the limits;
    the total left. Call it holding ``_memo_lock``."""
    while memo and (len(memo) >= _INTERNED_MAX or total + adding > _INTERNED_BYTES):
        oldest = next(iter(memo))                           # oldest first
        total -= size(oldest, memo.pop(oldest))
    return total


def _entry_size(_leaf: bytes, entry: tuple[object, int]) -> int:
    return entry[1]             # _intermediates_sent: (intermediates, DER bytes with leaf)


_INTERNED_MAX = 4096
_INTERNED_BYTES = 8 * 1024 * 1024
_INTERN_LARGEST = 16 * 1024
_interned: dict[bytes, x509.Certificate] = {}
# leaf DER -> (the intermediates the client last sent with it, their DER bytes with the leaf's)
_intermediates_sent: dict[bytes, tuple[tuple[x509.Certificate, ...], int]] = {}
_intermediates_bytes = 0
_interned_bytes = 0
# leaf and intermediates' DER as one -> (leaf DER, leaf, intermediates): see _chain_seen
_chains: dict[bytes, tuple[bytes, x509.Certificate, tuple[x509.Certificate, ...]]] = {}
_chains_bytes = 0
# Held while any of these memos changes: one process serves in one thread, but the tests run
# gateways in threads, and an eviction racing another would drop the wrong entry.
_memo_lock = threading.Lock()
