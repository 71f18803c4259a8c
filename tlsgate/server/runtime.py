"""A loaded configuration made ready to serve: TLS contexts, pipeline, limits.

A reload builds a new :class:`Runtime` next to the old one; new connections take the new one,
open connections finish on the one they started with.
"""

from __future__ import annotations

from dataclasses import dataclass

from OpenSSL import SSL

from tlsgate.config.errors import ConfigError, Problem
from tlsgate.config.loader import openssl_reason
from tlsgate.config.model import GatewayConfig
from tlsgate.http.base import HTTPLimits
from tlsgate.pipeline.gateway import Gateway
from tlsgate.tls.contexts import TLSContexts


@dataclass
class Runtime:
    config: GatewayConfig
    tls: TLSContexts
    gateway: Gateway
    limits: HTTPLimits

    @classmethod
    def build(cls, config: GatewayConfig) -> Runtime:
        """Raises :class:`ConfigError` (never a bare OpenSSL error) when OpenSSL refuses the
        configuration, so ``serve`` reports it and a reload keeps the running runtime."""
        try:
            tls = TLSContexts(config)
        except SSL.Error as error:
            message = f"OpenSSL refused the TLS configuration: {openssl_reason(error)}"
            raise ConfigError([Problem(config.path, None, None, message)]) from None
        settings = config.gateway
        limits = HTTPLimits(max_header_size=settings.max_header_size,
                            max_concurrent_streams=settings.http2_max_concurrent_streams)
        return cls(config, tls, Gateway(config, tls.selector), limits)
