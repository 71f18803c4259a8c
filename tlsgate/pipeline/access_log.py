"""One JSON line per request on the ``tlsgate.access`` logger (SPEC §6)."""

from __future__ import annotations

import json
import logging
import time

from tlsgate.certs.identity import certificate_names
from tlsgate.http.messages import ConnectionInfo, Request

access_logger = logging.getLogger("tlsgate.access")


def log_request(request: Request, status: int, started: float, *, bytes_out: int,
                reason: str | None = None, api: str | None = None,
                certificate=None) -> None:
    if not access_logger.isEnabledFor(logging.INFO):
        return
    conn = request.connection
    names = certificate_names(certificate) if certificate is not None else None
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
        "subject": names.subject if names else None,
        "thumbprint": names.thumbprint if names else None,
        "status": status,
        "reason": reason,
        "bytes_in": request.body.received,
        "bytes_out": bytes_out,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
    }
    access_logger.info(json.dumps(record))


def log_refused(conn: ConnectionInfo, status: int, reason: str, *, http_version: str,
                bytes_in: int = 0) -> None:
    """A line for a request the HTTP layer answered itself (400, 431, 501, a refused
    HTTP/2 stream): malformed input is a request too, and operators need to see it."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    certificate = conn.client_certificate
    names = certificate_names(certificate) if certificate is not None else None
    access_logger.info(json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "request_id": None,
        "client": f"{conn.client_address[0]}:{conn.client_address[1]}",
        "sni": conn.sni, "tls_version": conn.tls_version, "alpn": conn.alpn,
        "http_version": http_version, "method": None, "path": None, "api": None,
        "certificate_origin": conn.certificate_origin,
        "subject": names.subject if names else None,
        "thumbprint": names.thumbprint if names else None,
        "status": status, "reason": reason,
        "bytes_in": bytes_in, "bytes_out": 0, "duration_ms": None,
    }))
