"""Fetching the client certificate late, when a policy first reads it (SPEC §3).

On a hostname with ``negotiate_client_certificate = false`` the handshake asked for nothing.
The first ``await request.client_certificate()`` lands here and asks now: TLS 1.2
renegotiation or TLS 1.3 post-handshake authentication (see
:meth:`tlsgate.tls.session.TLSSession.request_client_certificate`).

The hard part is the request body. The client answers the handshake only after it has
written the body bytes already in flight, so what the gateway does with the socket while it
waits decides everything (``on_demand_body``):

* ``stall`` — HTTP.sys / API Management: read ``upload_read_ahead`` body bytes (or the whole
  body if smaller), ask, and stop reading. A larger body never lets the client's answer
  through: the exchange freezes until ``on_demand_timeout`` and the certificate is null
  (the policy then answers 403; a client that is mid-handshake by then may see a TLS error
  instead, as with API Management). This reproduces the deadlock.
* ``buffer`` — Apache / IIS: read the whole body into memory first (413 beyond
  ``on_demand_buffer_limit``), then ask; the client is idle by then.
* ``spool`` — the default, never deadlocks: ask at once and keep reading; body bytes that
  arrive meanwhile are kept in memory, then in a file in ``data_dir``.

HTTP/2 forbids both late mechanisms: the stream is reset with HTTP_1_1_REQUIRED (or the
certificate is null with ``on_demand_http2 = "null"``). One answer serves the connection: later
requests on it (pipelined ones included) get the same certificate without asking again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cryptography import x509

from tlsgate.http.messages import BodyTooLarge, HTTP11Required, Request
from tlsgate.http.spool import Spool
from tlsgate.tls.session import ClientCertificateReceived, TLSSession

log = logging.getLogger("tlsgate.late_certificate")


class LateCertificate:
    """One connection's late certificate: asked at most once, awaited by its requests."""

    def __init__(self, tls: TLSSession, flush, data_dir: Path) -> None:
        self._tls = tls
        self._flush = flush            # sends what the TLS session wrote
        self._data_dir = data_dir
        self._answer: asyncio.Future[ClientCertificateReceived | None] | None = None

    async def fetch(self, request: Request) -> x509.Certificate | None:
        info = request.connection
        if info.handshake_certificate is not None:
            request.certificate_origin = "handshake"
            return info.handshake_certificate
        settings = info.host_settings
        if settings is None or settings.negotiate_client_certificate:
            return None                 # asked in the handshake; the client sent none
        if request.http_version == "2":
            if settings.on_demand_http2 == "null":
                return None
            raise HTTP11Required()
        if self._answer is None:
            await self._prepare_body(request, settings)
            self._answer = self._ask()
        if self._answer.done():
            answer = self._answer.result()      # asked before on this connection (no wait)
        else:
            try:
                answer = await asyncio.wait_for(asyncio.shield(self._answer),
                                                settings.on_demand_timeout)
            except TimeoutError:
                log.info("no client certificate within on_demand_timeout (%ss) from %s:%s",
                         settings.on_demand_timeout, *info.client_address[:2])
                return None
        if answer is None:
            return None
        request.certificate_origin = answer.origin
        return answer.certificate

    def _ask(self) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._flush()                  # application data written so far goes first
        reason = self._tls.request_client_certificate()
        self._flush()
        if reason is not None:
            log.info("client certificate not requested: %s", reason)
            future.set_result(None)
        return future

    def received(self, event: ClientCertificateReceived, info) -> None:
        """The TLS session reported the answer (called by the connection)."""
        info.late_origin = event.origin
        info.late_certificate = event.certificate
        info.late_chain = event.chain
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(event)

    async def _prepare_body(self, request: Request, settings) -> None:
        body = request.body
        mode = settings.on_demand_body
        if mode == "buffer" and body.received > settings.on_demand_buffer_limit:
            # Already read past the buffer (it arrived quickly): the same 413 as if the
            # bytes had come in after the request.
            raise BodyTooLarge(settings.on_demand_buffer_limit)
        if body.complete:
            return
        if body.received == 0 and _expects_continue(request):
            # The client holds its body back until 100 Continue, which is only sent when
            # the body is first read, after the certificate: nothing is in flight.
            return
        if mode == "stall":
            # HTTP.sys reads ahead before the application (and its certificate request) runs:
            # the HelloRequest goes out once upload_read_ahead bytes are in, and from then on
            # nothing more is read.
            body.set_high_water(settings.upload_read_ahead)
            await body.wait_buffered()
        elif mode == "buffer":
            limit = settings.on_demand_buffer_limit
            body.limit = min(body.limit, limit) if body.limit is not None else limit
            body.set_high_water(limit)
            await body.wait_buffered()    # the whole body, or BodyTooLarge when read
        else:
            body.start_spooling(Spool(settings.on_demand_buffer_limit,
                                      settings.on_demand_spool_limit, self._data_dir))
            return
        if body.error is not None:
            # The body failed while it was awaited (too large, the client stalled past
            # idle_timeout, the client left): no certificate is asked for.
            raise body.error


def _expects_continue(request: Request) -> bool:
    expect = request.header(b"expect")
    return expect is not None and expect.lower() == b"100-continue"
