"""One JSON line per request on the ``tlsgate.access`` logger (SPEC §6)."""

from __future__ import annotations

import json
import logging
import time

from tlsgate.certs.identity import dotnet_name, thumbprint
from tlsgate.http.messages import Request

access_logger = logging.getLogger("tlsgate.access")


def log_request(request: Request, status: int, started: float, *, bytes_out: int,
                reason: str | None = None, api: str | None = None,
                certificate=None) -> None:
    if not access_logger.isEnabledFor(logging.INFO):
        return
    conn = request.connection
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "request_id": request.request_id,
        "client": f"{conn.client_address[0]}:{conn.client_address[1]}",
        "sni": conn.sni,
        "tls_version": conn.tls_version,
        "alpn": conn.alpn,
        "http_version": request.http_version,
        "method": request.method,
        "path": request.path,
        "api": api,
        "certificate_origin": request.certificate_origin if certificate is not None else "none",
        "subject": dotnet_name(certificate.subject) if certificate is not None else None,
        "thumbprint": thumbprint(certificate) if certificate is not None else None,
        "status": status,
        "reason": reason,
        "bytes_in": request.body.received,
        "bytes_out": bytes_out,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
    }
    access_logger.info(json.dumps(record))
