"""A loaded configuration made ready to serve: TLS contexts, pipeline, limits.

A reload builds a new :class:`Runtime` next to the old one; new connections take the new one,
open connections finish on the one they started with.
"""

from __future__ import annotations

from dataclasses import dataclass

from OpenSSL import SSL

from tlsgate.certs.revocation import RevocationChecker, ca_certificates_of
from tlsgate.certs.verify import CertificateVerifier
from tlsgate.config.errors import ConfigError, Problem
from tlsgate.config.loader import openssl_reason
from tlsgate.config.model import GatewayConfig
from tlsgate.http.base import HTTPLimits
from tlsgate.pipeline.gateway import Gateway
from tlsgate.policy.engine import PolicyEngine
from tlsgate.tls.contexts import TLSContexts


def build_verifier(config: GatewayConfig) -> CertificateVerifier:
    """``Verify()`` and ``validate-client-certificate``'s judge for this configuration: the CA
    store and the loaded CRLs under ``[revocation] mode`` (its cache lives with the runtime)."""
    entries = list(config.ca_certificates.values())
    revocation = RevocationChecker(config.revocation.crls, ca_certificates_of(entries),
                                   config.revocation.mode)
    return CertificateVerifier(entries, revocation)


@dataclass
class Runtime:
    config: GatewayConfig
    tls: TLSContexts
    gateway: Gateway
    limits: HTTPLimits
    verifier: CertificateVerifier | None = None
    policies: PolicyEngine | None = None

    @classmethod
    def build(cls, config: GatewayConfig) -> Runtime:
        """Raises :class:`ConfigError` (never a bare OpenSSL error) when OpenSSL refuses the
        configuration or a policy document has problems (every one of them is listed), so
        ``serve`` reports it and a reload keeps the running runtime.

        Everything per-configuration is built here, once: TLS contexts, the certificate
        verifier, the compiled policies (statement trees, expressions, certificate views)."""
        problems: list[Problem] = []
        tls = None
        try:
            tls = TLSContexts(config)
        except SSL.Error as error:
            message = f"OpenSSL refused the TLS configuration: {openssl_reason(error)}"
            problems.append(Problem(config.path, None, None, message))
        verifier = build_verifier(config)
        policies = None
        try:
            policies = PolicyEngine.build(config, verifier=verifier,
                                          compiled=config.policies.compile)
        except ConfigError as error:
            problems.extend(error.problems)
        if problems or tls is None or policies is None:
            raise ConfigError(problems)
        settings = config.gateway
        limits = HTTPLimits(max_header_size=settings.max_header_size,
                            max_concurrent_streams=settings.http2_max_concurrent_streams)
        gateway = Gateway(config, tls.selector, policies=policies)
        return cls(config, tls, gateway, limits, verifier, policies)
