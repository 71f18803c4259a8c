"""TLS contexts, built once per configuration, and the SNI choice between them.

pyOpenSSL freezes a ``Context`` once a ``Connection`` was made from it, so everything is built
up front: one context per ``[[hostname]]`` entry, plus a *dispatch* context that every new
connection starts on. The dispatch context's servername callback runs at ClientHello time
(also when the client sent no SNI), picks the hostname entry, moves the connection onto its
context, and sets the connection's verify mode, which OpenSSL does not take over from the new
context by itself.

Each hostname context has its own session id context: a session made on one entry never
resumes on another (a session from a hostname that asked no certificate must not skip the
CertificateRequest of one that does).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from tlsgate.config.model import GatewayConfig, HostnameSettings

_TLS_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_ALERT_UNRECOGNIZED_NAME = 112
_SSL_TLSEXT_ERR_OK = 0
_SSL_TLSEXT_ERR_ALERT_FATAL = 2


@_ffi.callback("int (*)(int, X509_STORE_CTX *)")
def _accept_any_certificate(preverify_ok, store_ctx):  # noqa: ARG001 - C signature
    """Verify callback of handshake mode: any certificate passes the TLS layer.

    Trust, dates and revocation are judged later by policy (``Verify()``), as in API
    Management; the TLS layer only collects the certificate. One C callback serves every
    connection, so accepting a certificate costs no Python call per chain element.
    """
    return 1


@dataclass(frozen=True)
class HostTLS:
    """A hostname entry with its ready-made TLS context."""

    settings: HostnameSettings
    context: SSL.Context
    verify_mode: int

    @property
    def name(self) -> str:
        return self.settings.name


class HostnameSelector:
    """Maps a server name to a hostname entry: exact, then ``*.`` wildcard, then ``default``."""

    def __init__(self, hosts: list[HostTLS]) -> None:
        self._exact: dict[str, HostTLS] = {}
        self._wildcards: dict[str, HostTLS] = {}
        self.default: HostTLS | None = None
        for host in hosts:
            name = host.name.lower()
            if name == "default":
                self.default = host
            elif name.startswith("*."):
                self._wildcards[name[2:]] = host
            else:
                self._exact[name] = host

    def select(self, server_name: str | None) -> HostTLS | None:
        if server_name:
            name = server_name.lower().rstrip(".")
            host = self._exact.get(name)
            if host is not None:
                return host
            _, dot, parent = name.partition(".")
            if dot:
                host = self._wildcards.get(parent)
                if host is not None:
                    return host
        return self.default


class TLSContexts:
    """All TLS contexts of one configuration and the dispatch logic between them."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        hosts = [self._build_host(h) for h in config.hostnames]
        self.hosts = {host.name: host for host in hosts}
        self.selector = HostnameSelector(hosts)
        self.dispatch_context = self._build_dispatch_context()
        self._servername_cb = _ffi.callback("int (*)(SSL *, int *, void *)",
                                            self._on_servername)
        _lib.SSL_CTX_set_tlsext_servername_callback(self.dispatch_context._context,
                                                    self._servername_cb)

    # -- building -------------------------------------------------------------------------

    def _base_context(self) -> SSL.Context:
        gateway = self._config.gateway
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(_TLS_VERSIONS[gateway.min_tls])
        ctx.set_max_proto_version(_TLS_VERSIONS[gateway.max_tls])
        # Client-initiated renegotiation stays refused: OpenSSL 3 only allows it with
        # SSL_OP_ALLOW_CLIENT_RENEGOTIATION, which is never set here.
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        # Idle connections give their record buffers back (matters at 10k connections).
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        return ctx

    def _build_host(self, settings: HostnameSettings) -> HostTLS:
        ctx = self._base_context()
        self._load_server_certificate(ctx, settings.certificate)
        ctx.set_session_id(_session_id_context(settings))
        verify_mode = SSL.VERIFY_NONE
        if settings.negotiate_client_certificate:
            verify_mode = SSL.VERIFY_PEER
            if settings.client_certificate_required:
                verify_mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            self._advertise_trusted_cas(ctx)
        ctx.set_alpn_select_callback(_alpn_chooser(settings.http2))
        return HostTLS(settings, ctx, verify_mode)

    def _build_dispatch_context(self) -> SSL.Context:
        """The context connections start on; its certificate is only a placeholder."""
        ctx = self._base_context()
        first = self._config.hostnames[0]
        self._load_server_certificate(ctx, (self.selector.default or self.hosts[first.name]).settings.certificate)
        ctx.set_session_id(b"tlsgate-dispatch")
        return ctx

    def _load_server_certificate(self, ctx: SSL.Context, certificate_id: str) -> None:
        loaded = self._config.certificates[certificate_id].loaded
        assert loaded is not None and loaded.private_key is not None  # checked by the loader
        ctx.use_certificate(crypto.X509.from_cryptography(loaded.certificate))
        for extra in loaded.chain:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        key_pem = loaded.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem))
        ctx.check_privatekey()

    def _advertise_trusted_cas(self, ctx: SSL.Context) -> None:
        """Name the trusted roots in the CertificateRequest, so clients pick a fitting cert."""
        names = []
        for entry in self._config.ca_certificates.values():
            if entry.store == "root":
                names += [crypto.X509.from_cryptography(c).get_subject() for c in entry.certificates]
        if names:
            ctx.set_client_ca_list(names)

    # -- per connection -------------------------------------------------------------------

    def new_connection(self) -> SSL.Connection:
        conn = SSL.Connection(self.dispatch_context, None)
        conn.set_accept_state()
        return conn

    def _on_servername(self, ssl, alert, _arg) -> int:
        """ClientHello time: choose the hostname entry and switch the connection to it."""
        conn = SSL.Connection._reverse_mapping[ssl]
        raw = _lib.SSL_get_servername(ssl, _lib.TLSEXT_NAMETYPE_host_name)
        server_name = _ffi.string(raw).decode("ascii", "replace") if raw != _ffi.NULL else None
        host = self.selector.select(server_name)
        if host is None:
            alert[0] = _ALERT_UNRECOGNIZED_NAME
            return _SSL_TLSEXT_ERR_ALERT_FATAL
        conn.set_context(host.context)
        _lib.SSL_set_verify(ssl, host.verify_mode,
                            _accept_any_certificate if host.verify_mode else _ffi.NULL)
        conn.tlsgate_host = host  # read back by TLSSession once the handshake is done
        return _SSL_TLSEXT_ERR_OK


def _session_id_context(settings: HostnameSettings) -> bytes:
    """A session id context unique to the entry and its certificate settings (max 32 bytes)."""
    key = f"{settings.name}|{settings.negotiate_client_certificate}|{settings.client_certificate_required}"
    return hashlib.sha256(key.encode()).digest()[:32]


def _alpn_chooser(http2: bool):
    offer = (b"h2", b"http/1.1") if http2 else (b"http/1.1",)

    def choose(_conn: SSL.Connection, offered: list[bytes]) -> bytes:
        for protocol in offer:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return choose
