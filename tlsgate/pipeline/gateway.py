"""The request pipeline: route, check limits, pass the client certificate on, call the backend,
stream the answer back. Protocol-neutral: HTTP/1.1 and HTTP/2 requests arrive here alike."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

from tlsgate.backends import BackendError, make_backend
from tlsgate.certs.header_formats import encode_certificate
from tlsgate.config.model import GatewayConfig
from tlsgate.http.base import ResponseSink
from tlsgate.http.messages import BodyTooLarge, ClientGone, Request, Response
from tlsgate.pipeline.access_log import log_request
from tlsgate.pipeline.router import Route, Router
from tlsgate.tls.contexts import HostnameSelector

log = logging.getLogger("tlsgate.pipeline")

_request_ids = itertools.count(1)
_ID_PREFIX = ""


def _new_request_id_series() -> None:
    """Request ids are ``pid-start-counter``; a forked worker starts its own series."""
    global _request_ids, _ID_PREFIX
    _request_ids = itertools.count(1)
    _ID_PREFIX = f"{os.getpid():x}-{int(time.time()):x}-"


_new_request_id_series()
os.register_at_fork(after_in_child=_new_request_id_series)


class Gateway:
    """Everything a request needs from one loaded configuration."""

    def __init__(self, config: GatewayConfig, selector: HostnameSelector) -> None:
        self._config = config
        self._selector = selector
        self.router = Router([Route(api, make_backend(api)) for api in config.apis])
        upstream = config.upstream_client_certificate
        self._upstream_header = upstream.header.lower().encode() if upstream else None
        self._upstream_format = upstream.format if upstream else None
        self._max_body = config.gateway.max_body_size

    async def aclose(self) -> None:
        for route in self.router._routes:
            close = getattr(route.backend, "aclose", None)
            if close is not None:
                await close()

    async def handle(self, request: Request, sink: ResponseSink) -> None:
        started = time.monotonic()
        request.request_id = _ID_PREFIX + format(next(_request_ids), "x")
        if request.connection.handshake_certificate is not None:
            request.certificate_origin = "handshake"
        route = self.router.route(request.path)
        status, progress = 500, _Progress()
        try:
            try:
                response = await self._respond(request, route)
            except BodyTooLarge as exc:
                response = Response.json_error(413, str(exc))
                progress.reason = "BodyTooLarge"
            status = response.status
            await _send(sink, response, progress, head_only=request.method == "HEAD")
        except (ClientGone, asyncio.CancelledError):
            status = 499        # the client left, or its connection was torn down
            raise
        finally:
            # One line per request, however it ended.
            log_request(request, status, started, bytes_out=progress.sent,
                        reason=progress.reason, api=_api_name(route),
                        certificate=request.connection.handshake_certificate)

    async def _respond(self, request: Request, route: Route | None) -> Response:
        if route is None:
            return Response.json_error(404, f"no API serves {request.path}")
        misdirected = self._misdirected(request)
        if misdirected:
            return Response.json_error(421, misdirected)
        limit = route.api.max_body_size or self._max_body
        body = request.body
        if body.content_length is not None and body.content_length > limit:
            return Response.json_error(413, f"request body larger than {limit} bytes")
        body.limit = limit
        self._pass_certificate_upstream(request)
        try:
            return await route.backend.handle(request)
        except BackendError as exc:
            return Response.json_error(502, f"Bad Gateway: {exc}")

    def _misdirected(self, request: Request) -> str | None:
        """421 when Host picks a hostname entry with other client-certificate settings than
        the one SNI picked: the TLS handshake was made under the wrong rules for this host.
        A request without Host (HTTP/1.0) names no host: the SNI one applies."""
        if not request.authority:
            return None
        host = request.authority.rsplit(":", 1)[0] if not request.authority.startswith("[") \
            else request.authority.split("]")[0] + "]"
        by_host = self._selector.select(host.strip("[]") or None)
        by_sni = self._selector.select(request.connection.sni)
        if by_host is None or by_sni is None or by_host is by_sni:
            return None
        a, b = by_host.settings, by_sni.settings
        if (a.negotiate_client_certificate, a.client_certificate_required) != \
                (b.negotiate_client_certificate, b.client_certificate_required):
            return (f"Host {host!r} needs other client-certificate settings than the TLS "
                    f"server name {request.connection.sni!r}; connect with SNI {host!r}")
        return None

    def _pass_certificate_upstream(self, request: Request) -> None:
        """Strip any client-sent copy of the upstream header; add the real certificate.

        Only a certificate already known (from the handshake) is passed on: forwarding must
        never be what triggers a late certificate request.
        """
        name = self._upstream_header
        if name is None:
            return
        headers = [(n, v) for n, v in request.headers if n != name]
        certificate = request.connection.handshake_certificate
        if certificate is not None:
            headers.append((name, encode_certificate(certificate, self._upstream_format)))
        request.headers = headers


class _Progress:
    """What the access log needs to know about a response, even one cut short."""

    __slots__ = ("reason", "sent")

    def __init__(self) -> None:
        self.sent = 0                       # body bytes written to the client
        self.reason: str | None = None


async def _send(sink: ResponseSink, response: Response, progress: _Progress, *,
                head_only: bool = False) -> None:
    """Write a response to the client, counting the body bytes sent in ``progress``.

    A streamed body's known length goes out as Content-Length (the backends move it into
    ``Response.content_length``); a HEAD response keeps its headers and drops the body.
    """
    body = response.body
    headers = response.headers
    if response.content_length is not None and response.status >= 200 \
            and response.status not in (204, 304) \
            and not any(name == b"content-length" for name, _ in headers):
        headers = [*headers, (b"content-length", str(response.content_length).encode())]
    if head_only:
        try:
            await sink.start(response.status, headers, end_stream=True)
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        return
    if isinstance(body, (bytes, bytearray)):
        await sink.start(response.status, headers, end_stream=not body)
        if body:
            progress.sent = len(body)
            await sink.write(body)
            await sink.end()
        return
    try:
        await sink.start(response.status, headers)
        async for chunk in body:
            progress.sent += len(chunk)     # handed to the connection (maybe not all sent)
            await sink.write(chunk)
        await sink.end()
    except BackendError as exc:
        log.warning("backend failed mid-response: %s", exc)
        progress.reason = "BackendFailedMidResponse"
        sink.abort()
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


def _api_name(route: Route | None) -> str | None:
    return route.api.name if route else None
