"""The request pipeline: route, check limits, pass the client certificate on, call the backend,
stream the answer back. Protocol-neutral: HTTP/1.1 and HTTP/2 requests arrive here alike."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from tlsgate.backends import Backend, BackendError, make_backend
from tlsgate.certs.header_formats import encode_certificate
from tlsgate.config.model import GatewayConfig
from tlsgate.http.base import ResponseSink
from tlsgate.http.messages import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    Headers,
    HTTP11Required,
    Request,
    Response,
    close_body,
)
from tlsgate.pipeline.access_log import access_logger, log_request
from tlsgate.pipeline.router import Route, Router
from tlsgate.policy.engine import with_timeout
from tlsgate.tls.contexts import HostnameSelector

if TYPE_CHECKING:  # pragma: no cover
    from tlsgate.policy.engine import Pipeline, PolicyEngine

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

    def __init__(self, config: GatewayConfig, selector: HostnameSelector, *,
                 policies: PolicyEngine | None = None) -> None:
        # Host/SNI can only disagree about certificate settings when entries differ in them:
        # decided here once, so most configurations pay nothing per request for the check.
        self._hosts_differ = len({(h.negotiate_client_certificate, h.client_certificate_required)
                                  for h in config.hostnames}) > 1
        self._config = config
        self._selector = selector
        upstream = config.upstream_client_certificate
        # [upstream_client_certificate]: the step every backend call takes (None: no header)
        self._pass_upstream = None if upstream is None else functools.partial(
            pass_certificate_upstream, header=upstream.header.lower().encode(),
            encoding=upstream.format)
        routes = [Route(api, make_backend(api)) for api in config.apis]
        self.router = Router(routes)
        # API name -> (its policy pipeline, its forward-request). APIs without policies are
        # absent: they take the direct path, at no extra cost.
        self._pipelines: dict[str, tuple[Pipeline, _Forwarder]] = {}
        for route in routes if policies is not None else ():
            api = route.api
            pipeline = policies.pipeline(api.name)
            if pipeline is not None:
                backends = {timeout: make_backend(dataclasses.replace(api, timeout=timeout))
                            for timeout in pipeline.forward_timeouts if timeout != api.timeout}
                forwarder = _Forwarder(route.backend, backends, self._pass_upstream)
                self._pipelines[api.name] = (pipeline, forwarder)
        self._max_body = config.gateway.max_body_size

    async def aclose(self) -> None:
        backends = [route.backend for route in self.router._routes]
        for _, forwarder in self._pipelines.values():
            backends.extend(forwarder.backends.values())
        for backend in backends:
            close = getattr(backend, "aclose", None)
            if close is not None:
                await close()

    async def handle(self, request: Request, sink: ResponseSink) -> None:
        started = time.monotonic()
        request.request_id = _ID_PREFIX + format(next(_request_ids), "x")
        # A certificate already known on the connection (handshake, or fetched late by an
        # earlier request) is this request's too, with the way it came.
        request.certificate_origin = request.connection.certificate_origin
        route = self.router.route(request.path)
        status, progress = 500, _Progress()
        try:
            try:
                response = await self._respond(request, route, progress)
            except BodyTooLarge as exc:
                response = Response.json_error(413, str(exc))
                progress.reason = "BodyTooLarge"
            except BodyTimeout as exc:
                # (HTTP/1.1 closes the connection after it while the body is unfinished)
                response = Response.json_error(408, f"Request Timeout: {exc}")
                progress.reason = "BodyTimeout"
            except BackendError as exc:
                # A backend's body failed while a policy read it (context.Response.Body).
                log.warning("backend failed while a policy read its response: %s", exc)
                response = Response.json_error(502, f"Bad Gateway: {exc}")
                progress.reason = "BackendFailedMidResponse"
            status = response.status
            await _send(sink, response, progress, head_only=request.method == "HEAD")
        except (ClientGone, asyncio.CancelledError):
            status = 499        # the client left, or its connection was torn down
            raise
        except HTTP11Required:
            status, progress.reason = None, "HTTP_1_1_REQUIRED"   # a stream reset, no status
            raise
        finally:
            # One line per request, however it ended.
            if access_logger.isEnabledFor(logging.INFO):
                self._log(request, route, status, started, progress)

    @staticmethod
    def _log(request: Request, route: Route | None, status: int | None, started: float,
             progress: _Progress) -> None:
        certificate = progress.certificate
        if certificate is None:
            certificate = request.connection.client_certificate
        if request.certificate_origin == "none" and certificate is not None and \
                certificate is request.connection.client_certificate:
            request.certificate_origin = request.connection.certificate_origin
        log_request(request, status, started, bytes_out=progress.sent,
                    reason=progress.reason, api=_api_name(route), certificate=certificate)

    async def _respond(self, request: Request, route: Route | None,
                       progress: _Progress) -> Response:
        if route is None:
            return Response.json_error(404, f"no API serves {request.path}")
        misdirected = self._misdirected(request) if self._hosts_differ else None
        if misdirected:
            return Response.json_error(421, misdirected)
        limit = route.api.max_body_size or self._max_body
        body = request.body
        # Announced too large, or already past the limit with the bytes that came with the
        # head (before the limit was known here).
        if (body.content_length or 0) > limit or body.received > limit:
            raise BodyTooLarge(limit)
        body.limit = limit
        policy = self._pipelines.get(route.api.name) if self._pipelines else None
        if policy is None:
            if self._pass_upstream is not None:
                self._pass_upstream(request)
            try:
                return await route.backend.handle(request)
            except BackendError as exc:
                return Response.json_error(502, f"Bad Gateway: {exc}")
        pipeline, forwarder = policy
        outcome = await pipeline.run(request, forwarder.forward, body_limit=limit)
        progress.reason = outcome.reason
        progress.certificate = outcome.certificate
        return outcome.response

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


def pass_certificate_upstream(request: Request, *, header: bytes, encoding: str) -> None:
    """Strip any client-sent copy of the upstream ``header``; add the real certificate.

    Only a certificate already known (from the handshake, or fetched late because a policy
    read it) is passed on: forwarding must never be what triggers a late request.
    """
    headers = [(n, v) for n, v in request.headers if n != header]
    certificate = request.connection.client_certificate
    if certificate is not None:
        headers.append((header, encode_certificate(certificate, encoding)))
    request.headers = headers


class _Forwarder:
    """An API's ``forward-request``: :meth:`forward` is the policy engine's Forwarder (its
    backend, or the one built for a constant timeout). One per API, made with the gateway."""

    __slots__ = ("backend", "backends", "pass_certificate_upstream")

    def __init__(self, backend: Backend, backends: dict[float, Backend],
                 pass_certificate_upstream: Callable[[Request], None] | None) -> None:
        self.backend = backend
        self.backends = backends
        # None without [upstream_client_certificate]. (Not the gateway's bound method:
        # gateway -> forwarder -> gateway would be a cycle.)
        self.pass_certificate_upstream = pass_certificate_upstream

    async def forward(self, request: Request, timeout: float | None,
                      dynamic: bool) -> Response:
        if self.pass_certificate_upstream is not None:
            self.pass_certificate_upstream(request)
        if timeout is None or dynamic:
            backend = self.backend
        else:
            backend = self.backends.get(timeout, self.backend)
        try:
            if dynamic:
                return await with_timeout(backend.handle(request), timeout)
            return await backend.handle(request)
        except BackendError as exc:
            return Response.json_error(502, f"Bad Gateway: {exc}")


class _Progress:
    """What the access log needs to know about a response, even one cut short."""

    __slots__ = ("reason", "sent", "certificate")

    def __init__(self) -> None:
        self.sent = 0                       # body bytes written to the client
        self.reason: str | None = None
        self.certificate = None             # the certificate policies fetched, if any


def _has_length(headers: Headers) -> bool:
    for name, _ in headers:         # (a plain loop: twice as fast as any() over a genexpr)
        if name == b"content-length":
            return True
    return False


async def _send(sink: ResponseSink, response: Response, progress: _Progress, *,
                head_only: bool = False) -> None:
    """Write a response to the client, counting the body bytes sent in ``progress``.

    A streamed body's known length goes out as Content-Length (the backends move it into
    ``Response.content_length``); a HEAD response keeps its headers and drops the body.
    """
    body = response.body
    headers = response.headers
    if response.status in _NO_CONTENT:
        await _send_without_content(sink, response, headers)
        return
    if response.content_length is not None and not _has_length(headers):
        headers = [*headers, (b"content-length", str(response.content_length).encode())]
    if head_only:
        try:
            await _start(sink, response, headers, True)
        finally:
            await close_body(body)
        return
    if isinstance(body, (bytes, bytearray)):
        if len(body) <= _WHOLE_UNDER:
            send_whole = getattr(sink, "send_whole", None)     # HTTP/1.1's direct path
            if send_whole is not None and \
                    send_whole(response.status, headers, body, response.reason):
                progress.sent = len(body)
                try:
                    await sink.drain()
                except ClientGone:
                    pass        # all of it was handed over; the connection closes after it
                return
        await _start(sink, response, headers, not body)
        if body:
            progress.sent = len(body)
            await sink.end(body)
        return
    try:
        await _start(sink, response, headers, False)
        async for chunk in body:
            progress.sent += len(chunk)     # handed to the connection (maybe not all sent)
            await sink.write(chunk)
        await sink.end()
    except BackendError as exc:
        log.warning("backend failed mid-response: %s", exc)
        progress.reason = "BackendFailedMidResponse"
        sink.abort()
    finally:
        await close_body(body)


# A bytes body up to this size goes out with its head in one write where the sink can
# (larger ones are not copied to be joined).
_WHOLE_UNDER = 16384
# Statuses whose response carries no content, whatever a policy or backend put in it.
_NO_CONTENT = frozenset((204, 205, 304))


async def _send_without_content(sink: ResponseSink, response: Response, headers) -> None:
    """A 204, 205 or 304: the head alone (RFC 9110 §15.3.5, §15.3.6, §15.4.5). A body a
    policy set or a backend sent is dropped (a streamed one closed unread). 204 carries no
    Content-Length (§8.6) and 205 says 0; a 304's stays, being the length a 200 would have."""
    await close_body(response.body)
    if response.status != 304:
        headers = [field for field in headers if field[0].lower() != b"content-length"]
        if response.status == 205:
            headers.append((b"content-length", b"0"))
    await _start(sink, response, headers, True)


def _start(sink: ResponseSink, response: Response, headers,
           end_stream: bool) -> Awaitable[None]:
    if response.reason is None:
        return sink.start(response.status, headers, end_stream=end_stream)
    # a policy's reason phrase (HTTP/1.1 only)
    return sink.start(response.status, headers, end_stream=end_stream, reason=response.reason)


def _api_name(route: Route | None) -> str | None:
    return route.api.name if route else None
