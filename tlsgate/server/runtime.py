"""A loaded configuration made ready to serve: TLS contexts, pipeline, limits.

A reload builds a new :class:`Runtime` next to the old one; new connections take the new one,
open connections finish on the one they started with.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    def build(cls, config: GatewayConfig) -> "Runtime":
        tls = TLSContexts(config)
        settings = config.gateway
        limits = HTTPLimits(max_header_size=settings.max_header_size,
                            max_concurrent_streams=settings.http2_max_concurrent_streams)
        return cls(config, tls, Gateway(config, tls.selector), limits)
