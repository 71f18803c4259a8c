"""Client-side TLS for the load generator: memory BIOs driven by a plain TCP protocol.

Both engines take ciphertext from ``data_received`` and write ciphertext to the transport
themselves, so a keep-alive request costs two engine calls: :meth:`recv` (the response) and
:meth:`send` (the next request). Running TLS over memory BIOs rather than through
``loop.create_connection(ssl=...)`` is what lets ``resume`` mode hand a saved session to the
next connection (asyncio and uvloop take no ``session`` argument), and it keeps the per-record
work in C with no transport-level flow-control machinery in between.

- :class:`StdlibEngine` uses the ``ssl`` module (the system OpenSSL).
- :class:`PyOpenSSLEngine` uses pyOpenSSL (the OpenSSL bundled with the cryptography wheel),
  much faster at handshakes on this machine, a little slower per call for small records.

``tls_lib="auto"`` picks pyOpenSSL for the handshake modes and ``ssl`` for the others, which
were the fastest choices when measured (see bench/README.md).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from tlsgate.bench.load_common import DEFAULT_GROUPS, HANDSHAKE_MODES, TLS_LIBS

#: Plaintext read per call: one TLS record at most (SSL_read never returns more), and each
#: call allocates this much: with 256 KiB, reads were 22% of an h2 run's profile (16 KiB: 2%).
_READ_SIZE = 16384
_OUT_SIZE = 262144


class TLSFailure(Exception):
    """A TLS-level failure: handshake refused, certificate not accepted, bad record."""


@dataclass(frozen=True)
class ClientTLSSettings:
    cert: Path | None
    key: Path | None
    cacert: Path | None
    verify: bool
    alpn: tuple[str, ...]
    tls_version: str | None          # "1.2" | "1.3" | None (negotiate)
    lib: str                         # "ssl" | "pyopenssl"
    groups: str | None = DEFAULT_GROUPS   # key exchange groups offered (pyopenssl), "a:b"


def resolve_tls_lib(lib: str, mode: str) -> str:
    if lib not in TLS_LIBS:
        raise ValueError(f"unknown TLS library {lib!r}: choose from {', '.join(TLS_LIBS)}")
    if lib != "auto":
        return lib
    return "pyopenssl" if mode in HANDSHAKE_MODES else "ssl"


def make_factory(settings: ClientTLSSettings):
    """A callable ``(transport, server_hostname, session) -> engine`` sharing one context."""
    if settings.lib == "ssl":
        ctx = _stdlib_context(settings)
        return lambda transport, hostname, session: StdlibEngine(ctx, transport, hostname,
                                                                 session)
    ctx = _pyopenssl_context(settings)
    verify = settings.verify
    return lambda transport, hostname, session: PyOpenSSLEngine(ctx, transport, hostname,
                                                                session, verify)


# -- the ssl module ---------------------------------------------------------------------------

_STDLIB_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _stdlib_context(settings: ClientTLSSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.verify:
        if settings.cacert is not None:
            ctx.load_verify_locations(cafile=str(settings.cacert))
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert is not None:
        ctx.load_cert_chain(str(settings.cert), str(settings.key) if settings.key else None)
        # A TLS 1.3 server may ask for the certificate after the handshake (tlsgate's
        # on-demand hostnames): offer to answer, as curl does.
        ctx.post_handshake_auth = True
    if settings.tls_version:
        ctx.minimum_version = ctx.maximum_version = _STDLIB_VERSIONS[settings.tls_version]
    ctx.set_alpn_protocols(list(settings.alpn))
    return ctx


class _Engine:
    """What both engines share: the handshake driven by the bytes the server sends.

    Subclasses name their library's "want read" and error exceptions and provide
    ``_do_handshake``, ``_feed`` (ciphertext in) and ``_flush`` (ciphertext out)."""

    __slots__ = ()
    _WANT_READ: type[Exception]
    _ERROR: type[Exception]

    def start(self) -> None:
        """Send the ClientHello."""
        self._handshake()

    def handshake(self, data: bytes) -> bool:
        """Feed handshake bytes; True once the handshake is complete."""
        self._feed(data)
        return self._handshake()

    def _handshake(self) -> bool:
        try:
            self._do_handshake()
            self.done = True
        except self._WANT_READ:
            pass
        except self._ERROR as exc:
            self._flush()
            raise TLSFailure(self._reason(exc)) from None
        self._flush()
        return self.done


class StdlibEngine(_Engine):
    __slots__ = ("transport", "_in", "_out", "_obj", "done", "closed")
    _WANT_READ = ssl.SSLWantReadError
    _ERROR = ssl.SSLError

    def __init__(self, ctx: ssl.SSLContext, transport, hostname: str | None, session) -> None:
        self.transport = transport
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_hostname=hostname,
                                 session=session)
        self.done = False
        self.closed = False

    def _do_handshake(self) -> None:
        self._obj.do_handshake()

    def _feed(self, data: bytes) -> None:
        self._in.write(data)

    def _flush(self) -> None:
        if self._out.pending:
            self.transport.write(self._out.read())

    @staticmethod
    def _reason(exc: ssl.SSLError) -> str:
        return _ssl_reason(exc)

    def recv(self, data: bytes) -> bytes:
        """Ciphertext in, plaintext out (possibly b""); sets ``closed`` on close_notify."""
        incoming = self._in
        incoming.write(data)
        read = self._obj.read
        try:
            chunk = read(_READ_SIZE)
            if not incoming.pending:
                if self._out.pending:   # post-handshake messages (key update)
                    self.transport.write(self._out.read())
                return chunk
        except ssl.SSLWantReadError:
            if self._out.pending:       # our part of a renegotiation the server started
                self.transport.write(self._out.read())
            return b""
        except ssl.SSLZeroReturnError:
            self.closed = True
            return b""
        except ssl.SSLError as exc:
            raise TLSFailure(_ssl_reason(exc)) from None
        chunks = [chunk]
        try:
            while incoming.pending:
                chunks.append(read(_READ_SIZE))
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.closed = True
        except ssl.SSLError as exc:
            raise TLSFailure(_ssl_reason(exc)) from None
        if self._out.pending:
            self.transport.write(self._out.read())
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        self._obj.write(data)
        self.transport.write(self._out.read())

    def close(self) -> None:
        """Send close_notify (best effort)."""
        try:
            self._obj.unwrap()
        except ssl.SSLError:
            pass
        if self._out.pending:
            self.transport.write(self._out.read())

    @property
    def session(self):
        return self._obj.session

    @property
    def session_reused(self) -> bool:
        return self._obj.session_reused

    def describe(self) -> dict[str, str | None]:
        cipher = self._obj.cipher()
        return {"version": self._obj.version(), "cipher": cipher[0] if cipher else None,
                "group": None,   # not exposed by the ssl module before Python 3.13
                "alpn": self._obj.selected_alpn_protocol()}

    @property
    def alpn(self) -> str | None:
        return self._obj.selected_alpn_protocol()


def _ssl_reason(exc: ssl.SSLError) -> str:
    return exc.reason or exc.__class__.__name__


# -- pyOpenSSL --------------------------------------------------------------------------------

#: One scratch buffer for ciphertext leaving any pyOpenSSL connection (single-threaded use).
_OUT_BUFFER = _ffi.new("char[]", _OUT_SIZE)
_PYOPENSSL_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


def _pyopenssl_context(settings: ClientTLSSettings) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if settings.verify:
        ctx.set_verify(SSL.VERIFY_PEER, None)
        if settings.cacert is not None:
            ctx.load_verify_locations(str(settings.cacert))
        else:
            ctx.set_default_verify_paths()
    if settings.cert is not None:
        ctx.use_certificate_chain_file(str(settings.cert))
        ctx.use_privatekey_file(str(settings.key or settings.cert))
    if settings.tls_version:
        version = _PYOPENSSL_VERSIONS[settings.tls_version]
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
    else:
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION)
    if settings.groups:
        if _lib.SSL_CTX_set1_curves_list(ctx._context, settings.groups.encode()) != 1:
            raise ValueError(f"unknown key exchange groups {settings.groups!r}")
    ctx.set_alpn_protos([p.encode() for p in settings.alpn])
    return ctx


class PyOpenSSLEngine(_Engine):
    __slots__ = ("transport", "_conn", "done", "closed")
    _WANT_READ = SSL.WantReadError
    _ERROR = SSL.Error

    def __init__(self, ctx: SSL.Context, transport, hostname: str | None, session,
                 verify: bool) -> None:
        self.transport = transport
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        if hostname is not None:
            if not _is_ip(hostname):
                conn.set_tlsext_host_name(hostname.encode())
            if verify:
                _verify_host(conn, hostname)
        if session is not None:
            conn.set_session(session)
        self._conn = conn
        self.done = False
        self.closed = False

    def _do_handshake(self) -> None:
        self._conn.do_handshake()

    def _feed(self, data: bytes) -> None:
        self._conn.bio_write(data)

    @staticmethod
    def _reason(exc: SSL.Error) -> str:
        return _pyopenssl_reason(exc)

    def _flush(self) -> None:
        bio = self._conn._from_ssl
        pending = _lib.BIO_get_mem_data(bio, _ffi.NULL)   # bytes waiting, without reading
        while pending > 0:
            size = _lib.BIO_read(bio, _OUT_BUFFER, min(pending, _OUT_SIZE))
            if size <= 0:
                break
            self.transport.write(_ffi.buffer(_OUT_BUFFER, size)[:])
            pending -= size

    def recv(self, data: bytes) -> bytes:
        conn = self._conn
        conn.bio_write(data)
        chunks = []
        try:
            while True:
                chunks.append(conn.recv(_READ_SIZE))
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.closed = True
        except SSL.Error as exc:
            raise TLSFailure(_pyopenssl_reason(exc)) from None
        if _lib.BIO_get_mem_data(conn._from_ssl, _ffi.NULL) > 0:
            self._flush()
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)  # b"" when nothing was read

    def send(self, data: bytes) -> None:
        conn = self._conn
        view = memoryview(data)
        while view:
            sent = conn.send(view[:1 << 20])
            view = view[sent:]
            self._flush()

    def close(self) -> None:
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        self._flush()

    @property
    def session(self):
        return self._conn.get_session()

    @property
    def session_reused(self) -> bool:
        return _lib.SSL_session_reused(self._conn._ssl) == 1

    def describe(self) -> dict[str, str | None]:
        alpn = self._conn.get_alpn_proto_negotiated()
        group = None
        if getattr(_lib, "Cryptography_HAS_SSL_GET0_GROUP_NAME", 0):
            name = _lib.SSL_get0_group_name(self._conn._ssl)
            group = _ffi.string(name).decode() if name != _ffi.NULL else None
        return {"version": self._conn.get_protocol_version_name(),
                "cipher": self._conn.get_cipher_name(),
                "group": group, "alpn": alpn.decode() if alpn else None}

    @property
    def alpn(self) -> str | None:
        alpn = self._conn.get_alpn_proto_negotiated()
        return alpn.decode() if alpn else None


def _verify_host(conn: SSL.Connection, hostname: str) -> None:
    """Hostname (or IP address) check, as ``ssl.check_hostname`` does."""
    param = _lib.SSL_get0_param(conn._ssl)
    if _is_ip(hostname):
        import ipaddress
        packed = ipaddress.ip_address(hostname).packed
        ok = _lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed))
    else:
        name = hostname.encode()
        ok = _lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))
    if ok != 1:
        raise TLSFailure(f"cannot check host name {hostname!r}")


def _is_ip(host: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _pyopenssl_reason(exc: SSL.Error) -> str:
    if isinstance(exc, SSL.SysCallError):
        return "connection closed during TLS"
    try:
        return str(exc.args[0][0][2])
    except (IndexError, TypeError):
        return exc.__class__.__name__
