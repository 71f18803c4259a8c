"""TLS contexts, built once per configuration, one per ``[[hostname]]`` entry.

pyOpenSSL freezes a ``Context`` once a ``Connection`` was made from it, so everything is built
up front. A connection is created directly on its hostname's context, chosen from the SNI that
:mod:`tlsgate.tls.clienthello` read before OpenSSL saw a byte, instead of starting on a shared
context and switching in a servername callback: OpenSSL checks resumed sessions against the
context a connection was created with, so only this keeps every entry's sessions, ticket keys
and certificate settings apart (a session from a hostname that asks no certificate must never
resume on one that requires it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from tlsgate.config.model import GatewayConfig, HostnameSettings
from tlsgate.tls import unbound

_TLS_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_ALERT_UNRECOGNIZED_NAME = 112
_SSL_TLSEXT_ERR_OK = 0
_SSL_TLSEXT_ERR_ALERT_FATAL = 2
_SSL_TLSEXT_ERR_NOACK = 3
_ALPN_SELECT_SIGNATURE = ("int (*)(SSL *, const unsigned char **, unsigned char *, "
                          "const unsigned char *, unsigned int, void *)")


@_ffi.callback("int (*)(int, X509_STORE_CTX *)")
def accept_any_certificate(preverify_ok, store_ctx):  # C signature
    """Verify callback of handshake mode: any certificate passes the TLS layer.

    Trust, dates and revocation are judged later by policy (``Verify()``), as in API
    Management; the TLS layer only collects the certificate. Where :mod:`tlsgate.tls.unbound`
    finds OpenSSL's hook, the chain check this callback answers does not even run.
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
    """All TLS contexts of one configuration."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        self._unbound = unbound.load()
        hosts = [self._build_host(h) for h in config.hostnames]
        self.hosts = {host.name: host for host in hosts}
        self.selector = HostnameSelector(hosts)
        self._refusal_context = self._build_refusal_context()

    # -- building -------------------------------------------------------------------------

    def _base_context(self) -> SSL.Context:
        gateway = self._config.gateway
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(_TLS_VERSIONS[gateway.min_tls])
        ctx.set_max_proto_version(_TLS_VERSIONS[gateway.max_tls])
        # Client-initiated renegotiation stays refused: OpenSSL 3 only allows it with
        # SSL_OP_ALLOW_CLIENT_RENEGOTIATION, which is never set here.
        options = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
        if not gateway.session_tickets:
            options |= SSL.OP_NO_TICKET    # sessions stay in this process's cache
        ctx.set_options(options)
        # Idle connections give their record buffers back (matters at 10k connections).
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        if self._unbound is not None:   # else the loader refused settings other than OpenSSL's
            self._unbound.set_session_ticket_count(ctx, gateway.session_ticket_count)
            self._unbound.set_session_cache_size(ctx, gateway.session_cache_size)
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
            _lib.SSL_CTX_set_verify(ctx._context, verify_mode, accept_any_certificate)
        if self._unbound is not None:
            # Also where certificates come later (renegotiation, post-handshake auth).
            self._unbound.skip_chain_check(ctx)
        # Also for on-demand hostnames: a TLS 1.3 post-handshake CertificateRequest takes its
        # CA names from the context the connection was made on.
        self._advertise_trusted_cas(ctx)
        _lib.SSL_CTX_set_alpn_select_cb(
            ctx._context, _SELECT_H2_FIRST if settings.http2 else _SELECT_HTTP11, _ffi.NULL)
        # The name was already used to pick this context; accepting it here makes OpenSSL
        # acknowledge it in the ServerHello (RFC 6066 §3) and keep it in the session.
        _lib.SSL_CTX_set_tlsext_servername_callback(ctx._context, _accept_server_name)
        return HostTLS(settings, ctx, verify_mode)

    def _build_refusal_context(self) -> SSL.Context:
        """For server names no entry serves (and no ``default``): the handshake ends with an
        ``unrecognized_name`` alert, sent from the servername callback."""
        ctx = self._base_context()
        any_host = next(iter(self.hosts.values()))
        self._load_server_certificate(ctx, any_host.settings.certificate)
        self._refuse_cb = _ffi.callback("int (*)(SSL *, int *, void *)", _refuse_server_name)
        _lib.SSL_CTX_set_tlsext_servername_callback(ctx._context, self._refuse_cb)
        return ctx

    def _load_server_certificate(self, ctx: SSL.Context, certificate_id: str) -> None:
        loaded = self._config.certificates[certificate_id].loaded
        assert loaded is not None and loaded.private_key is not None  # checked by the loader
        ctx.use_certificate(loaded.certificate)
        for extra in loaded.chain:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(loaded.private_key)
        ctx.check_privatekey()

    def _advertise_trusted_cas(self, ctx: SSL.Context) -> None:
        """Name the trusted roots in the CertificateRequest, so clients pick a fitting cert."""
        for entry in self._config.ca_certificates.values():
            if entry.store == "root":
                ctx.load_client_ca(str(entry.file).encode())

    # -- per connection -------------------------------------------------------------------

    def new_connection(self, server_name: str | None) -> tuple[SSL.Connection, HostTLS | None]:
        """A server connection on the context of the entry ``server_name`` selects."""
        host = self.selector.select(server_name)
        conn = SSL.Connection(host.context if host else self._refusal_context, None)
        conn.set_accept_state()
        return conn, host


@_ffi.callback("int (*)(SSL *, int *, void *)")
def _accept_server_name(_ssl, _alert, _arg) -> int:
    return _SSL_TLSEXT_ERR_OK


def _refuse_server_name(_ssl, alert, _arg) -> int:
    alert[0] = _ALERT_UNRECOGNIZED_NAME
    return _SSL_TLSEXT_ERR_ALERT_FATAL


def _session_id_context(settings: HostnameSettings) -> bytes:
    """A session id context unique to the entry and its certificate settings (max 32 bytes)."""
    key = "|".join((settings.name, str(settings.negotiate_client_certificate),
                    str(settings.client_certificate_required)))
    return hashlib.sha256(key.encode()).digest()[:32]


def _alpn_selector(preference: tuple[bytes, ...]):
    """An ALPN select callback in C's terms: the first of ``preference`` the client offers.

    Set directly (not with pyOpenSSL's set_alpn_select_callback, whose wrapper splits the
    list into Python objects on every handshake). No overlap is no ALPN at all (NOACK): the
    connection goes on as HTTP/1.1, as before ALPN existed. An exception in here (a bug)
    fails the handshake instead of leaving OpenSSL with no answer.
    """
    @_ffi.callback(_ALPN_SELECT_SIGNATURE, error=_SSL_TLSEXT_ERR_ALERT_FATAL)
    def select(_ssl, out, out_length, offered, offered_length, _arg):
        wire = _ffi.buffer(offered, offered_length)[:]   # OpenSSL checked its framing
        starts = {}
        position = 0
        while position < offered_length:
            length = wire[position]
            starts.setdefault(wire[position + 1:position + 1 + length], position + 1)
            position += 1 + length
        for protocol in preference:
            start = starts.get(protocol)
            if start is not None:
                out[0] = offered + start
                out_length[0] = len(protocol)
                return _SSL_TLSEXT_ERR_OK
        return _SSL_TLSEXT_ERR_NOACK

    return select


_SELECT_H2_FIRST = _alpn_selector((b"h2", b"http/1.1"))
_SELECT_HTTP11 = _alpn_selector((b"http/1.1",))
