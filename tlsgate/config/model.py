"""The loaded configuration: plain, immutable records with every default applied.

``tlsgate.config.loader`` turns a TOML file into a :class:`GatewayConfig`; everything else in
tlsgate reads these records and never the raw TOML. Paths are already absolute (resolved
against the config file's folder) and ``env:NAME`` secrets are already read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

TLS_VERSIONS = ("1.2", "1.3")
ON_DEMAND_BODY_MODES = ("spool", "buffer", "stall")
ON_DEMAND_HTTP2_MODES = ("http_1_1_required", "null")
REVOCATION_MODES = ("strict", "ignore-unavailable", "skip")
CA_STORES = ("root", "intermediate")
CERT_HEADER_FORMATS = ("pem", "pem-urlencoded", "base64-der", "rfc9440", "xfcc")


@dataclass(frozen=True)
class GatewaySettings:
    listen: tuple[str, ...] = ("127.0.0.1:8443",)
    workers: int = 1
    data_dir: Path = Path(".tlsgate")
    min_tls: str = "1.2"
    max_tls: str = "1.3"
    handshake_timeout: float = 10.0
    idle_timeout: float = 75.0
    proxy_protocol: tuple[str, ...] = ()
    # Beyond the SPEC's keys: limits every edge proxy needs.
    max_header_size: int = 16384          # request line + headers (431 beyond)
    max_body_size: int = 104857600        # default request body limit (413 beyond)
    http2_max_concurrent_streams: int = 100
    # TLS session tickets: stateless resumption that works across workers. False keeps
    # sessions in each worker's cache instead: full handshakes cost ~10 % less CPU here
    # (no tickets to seal), but a session resumes only on the worker that made it.
    session_tickets: bool = True
    # TLS 1.3 session tickets sent after a handshake (OpenSSL's default 2 lets a client resume
    # two connections at once; 1 serves a client that resumes one at a time, 0 = none).
    session_ticket_count: int = 2
    # Sessions each [[hostname]] entry's cache holds, per worker (used when session_tickets
    # = false; OpenSSL's default). A TLS 1.3 handshake stores one per ticket, each with the
    # client's chain.
    session_cache_size: int = 20480


@dataclass(frozen=True)
class AdminSettings:
    listen: str = "127.0.0.1:9901"
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LoadedCertificate:
    """A certificate as read from disk: the leaf, its chain, and maybe a private key."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()
    private_key: PrivateKeyTypes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CertificateEntry:
    id: str
    file: Path | None
    loaded: LoadedCertificate | None
    password: str | None = field(default=None, repr=False)
    vault: str | None = None
    refresh_interval: float = 14400.0
    # Beyond the SPEC's keys: a separate private key file (PEM or DER), as `tlsgate pki init`
    # and openssl write them (server.pem + server.key).
    key_file: Path | None = None


@dataclass(frozen=True)
class CACertificateEntry:
    id: str
    file: Path
    store: str                                   # "root" | "intermediate"
    certificates: tuple[x509.Certificate, ...]   # a PEM bundle may hold several


@dataclass(frozen=True)
class RevocationSettings:
    mode: str = "strict"
    crl_files: tuple[Path, ...] = ()
    fetch_distribution_points: bool = True
    fetch_timeout: float = 5.0
    crls: tuple = ()                       # tlsgate.certs.revocation.LoadedCRL, checked
    load_warnings: tuple[str, ...] = ()    # e.g. a CRL past its nextUpdate


@dataclass(frozen=True)
class HostnameSettings:
    name: str                      # exact, "*.example.com" or "default"
    certificate: str               # id of a [[certificate]] with a private key
    negotiate_client_certificate: bool = False
    client_certificate_required: bool = False
    http2: bool = True
    on_demand_body: str = "spool"
    on_demand_buffer_limit: int = 131072
    on_demand_spool_limit: int = 104857600
    upload_read_ahead: int = 49152
    on_demand_timeout: float = 60.0
    on_demand_http2: str = "http_1_1_required"


@dataclass(frozen=True)
class ApiSettings:
    name: str
    path: str                      # path prefix, starts with "/"
    backend: str                   # "echo:" or "http://host:port/base"
    policy: Path | None = None
    timeout: float = 30.0
    max_body_size: int | None = None   # overrides [gateway] max_body_size


@dataclass(frozen=True)
class PoliciesSettings:
    global_policy: Path | None = None  # TOML key "global"
    # Inbound sections and expressions as generated Python code where they can be
    # (tlsgate.policy.codegen, csharp/inline.py); false: the engine and closures alone
    # (a switch for a suspected difference).
    compile: bool = True


@dataclass(frozen=True)
class CertificateHeaderSettings:
    header: str
    format: str
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    gateway: GatewaySettings
    admin: AdminSettings | None
    certificates: dict[str, CertificateEntry]
    ca_certificates: dict[str, CACertificateEntry]
    revocation: RevocationSettings
    hostnames: tuple[HostnameSettings, ...]
    apis: tuple[ApiSettings, ...]
    policies: PoliciesSettings
    forwarded_client_certificate: CertificateHeaderSettings | None
    upstream_client_certificate: CertificateHeaderSettings | None
    # Top-level sections written in the file: a section that only holds default values (e.g.
    # `[revocation]` with `mode = "strict"`) still deserves its "not implemented yet" warning.
    sections: frozenset[str] = frozenset()
