"""The one place where sockets, TLS and HTTP meet: an asyncio Protocol per client connection.

Bytes from the socket go into the sans-IO :class:`TLSSession`; its events drive the HTTP
adapter chosen by ALPN; everything the adapters write is encrypted by the session and sent.
This module owns the connection's timers (handshake, idle) and its request tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from cryptography import x509

from tlsgate.http.h1 import H1Connection
from tlsgate.http.h2 import H2Connection
from tlsgate.http.messages import BodyTimeout, ClientGone, ConnectionInfo, Request
from tlsgate.server.late_certificate import LateCertificate
from tlsgate.server.runtime import Runtime
from tlsgate.tls.clienthello import NotTLS
from tlsgate.tls.session import (
    ApplicationData,
    ClientCertificateReceived,
    HandshakeCompleted,
    PeerClosed,
    TLSError,
    TLSSession,
)

log = logging.getLogger("tlsgate.connection")

_PLAIN_HTTP_BODY = b"Plain HTTP was sent to an HTTPS port: use https://\n"
_PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: "
                      + str(len(_PLAIN_HTTP_BODY)).encode()
                      + b"\r\nconnection: close\r\n\r\n" + _PLAIN_HTTP_BODY)
# Plaintext written by the adapters is encrypted and sent at the end of the loop iteration,
# or at once past _FLUSH_AT bytes; pieces are joined into one TLS record up to _JOIN_UNDER.
_FLUSH_AT = 65536
_JOIN_UNDER = 16384
# Bytes waiting in the transport past which a client that does not read is dropped. Response
# bodies wait for the socket (drain) and never get near it; replies a client provokes
# without reading them (HTTP/2 PING or SETTINGS ACKs, resets) would grow without bound.
_BACKLOG_LIMIT = 8 * 1024 * 1024
# After a fatal alert or the plain-HTTP answer: how long input is still read (and dropped)
# before the socket is closed. See GatewayConnection._linger_close.
_LINGER_SECONDS = 2.0


class GatewayConnection(asyncio.Protocol):
    def __init__(self, runtime: Runtime, registry: set[GatewayConnection]) -> None:
        self._runtime = runtime
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._tls: TLSSession | None = None
        self._http: H1Connection | H2Connection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._closing = False
        self._active_requests = 0
        self._timer: asyncio.TimerHandle | None = None
        self._idle_deadline = 0.0
        self.info: ConnectionInfo | None = None
        self._late: LateCertificate | None = None
        self._flush_scheduled = False
        self._plaintext: list[bytes] | None = None    # written, not yet encrypted
        self._plaintext_size = 0
        self._reading_resumed_at = 0.0      # loop time reading last resumed after a pause

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._registry.add(self)
        self._tls = TLSSession(self._runtime.tls)
        self._loop = loop = asyncio.get_running_loop()
        self._idle_timeout = self._runtime.config.gateway.idle_timeout
        timeout = self._runtime.config.gateway.handshake_timeout
        self._timer = loop.call_later(timeout, self._on_handshake_timeout)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.info = ConnectionInfo(client_address=peer[:2])

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # lingering after a fatal alert or a refusal: input is dropped
        try:
            self._tls.receive_data(data)
        except NotTLS as exc:
            self._refuse_non_tls(exc.looks_like_http)
            return
        self._process_tls()

    def eof_received(self) -> bool:
        if self._tls is not None and not self._closing:
            self._tls.receive_data(b"")
            self._process_tls()
            self._flush()           # now: asyncio closes the transport when this returns
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._registry.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._http is not None:
            self._http.connection_lost()
        for task in list(self._tasks):
            task.cancel()
        self._wake_drain()
        # Drop the links that point back here (the adapter's channel, the timer's and the
        # late certificate's callbacks): the connection is then freed by reference counting
        # at once, not left to the cyclic garbage collector (~17 µs per connection).
        self._timer = None
        self._http = None
        self._late = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- TLS ------------------------------------------------------------------------------

    def _process_tls(self) -> None:
        if self._plaintext is not None:
            # Written before this input arrived: encrypt it under the session state it was
            # written in (a renegotiation that the input moves on must not come first).
            self._encrypt_plaintext()
            if self._closing:
                return                      # the session refused it: the connection is over
        try:
            events = self._tls.next_events()
        except TLSError as exc:
            log.info("TLS failure from %s: %s", _address(self.info), exc)
            self._flush()
            self._linger_close()
            return
        handshake_done = False
        for event in events:
            kind = type(event)
            if kind is ApplicationData:
                if self._http is not None:
                    self._http.receive_data(event.data)
            elif kind is HandshakeCompleted:
                self._on_handshake(event)
                handshake_done = True
            elif kind is ClientCertificateReceived:
                self._late.received(event, self.info)
            elif kind is PeerClosed:
                if self._http is not None:
                    self._http.receive_eof()
                else:
                    self.close()
        if handshake_done:
            # The session tickets OpenSSL queued at the handshake's end wait for the answer
            # to a request that came with the client's Finished: one write, one segment.
            self._flush_soon()
        else:
            self._flush()

    def _on_handshake(self, event: HandshakeCompleted) -> None:
        info = self.info
        info.sni = event.server_name
        info.tls_version = event.tls_version
        info.alpn = event.alpn
        info.cipher = event.cipher
        info.session_resumed = event.session_resumed
        info.hostname = event.host.name if event.host else None
        info.handshake_certificate = event.client_certificate
        info.handshake_chain = event.client_chain
        info.host_settings = event.host.settings if event.host else None
        runtime = self._runtime
        self._late = LateCertificate(self._tls, self._flush, runtime.config.gateway.data_dir)
        adapter = H2Connection if event.alpn == "h2" else H1Connection
        self._http = adapter(self, info, runtime.gateway.handle, runtime.limits)
        self._start_idle_checks()

    def _flush(self) -> None:
        if self._tls is None or self._transport is None:
            return
        if self._plaintext is not None:
            self._encrypt_plaintext()
        out = self._tls.data_to_send()
        if out and not self._transport.is_closing():
            self._transport.write(out)
            if self._write_paused and \
                    self._transport.get_write_buffer_size() > _BACKLOG_LIMIT:
                log.info("%s does not read its replies (%d bytes queued): dropped",
                         _address(self.info), self._transport.get_write_buffer_size())
                self.abort()

    def _refuse_non_tls(self, looks_like_http: bool) -> None:
        """Plain HTTP on the TLS port gets a readable 400 (as nginx does); other bytes just
        a closed connection. Either way no traceback and no wait for a timeout."""
        if looks_like_http:
            self._transport.write(_PLAIN_HTTP_ANSWER)
        log.info("non-TLS bytes from %s; closing", _address(self.info))
        self._linger_close()

    def _linger_close(self) -> None:
        """Send what is queued (a fatal alert, the 400 answer) and a FIN, then drop what the
        client still sends for up to ``_LINGER_SECONDS`` before closing the socket.

        Closing at once makes the kernel answer bytes the client has in flight with a reset,
        and the reset can destroy the alert before the client reads it: a TLS 1.3 client
        sends its first request right behind its Finished, so curl, refused by
        ``client_certificate_required``, then reports "getpeername() failed" or "connection
        reset" instead of the certificate_required alert (nginx's lingering close).
        """
        self._closing = True
        transport = self._transport
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_LINGER_SECONDS, transport.close)

    # -- timers ---------------------------------------------------------------------------

    def _on_handshake_timeout(self) -> None:
        if self._tls.handshake_complete:
            self._on_idle_check()       # the timer serves the idle checks now
            return
        log.info("TLS handshake timeout from %s", _address(self.info))
        self._closing = True
        self._transport.abort()

    def _start_idle_checks(self) -> None:
        """One timer per idle period, re-armed lazily, instead of one per read. The
        handshake's timer goes on as the first: when it fires on an established connection
        it checks idleness and re-arms for the idle deadline, so a short connection makes
        one timer, not two (unless idle_timeout ends before the handshake's deadline)."""
        self._idle_deadline = deadline = self._loop.time() + self._idle_timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_idle_check)

    def _on_idle_check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._active_requests == 0:
            if now >= self._idle_deadline:
                log.debug("idle timeout for %s", _address(self.info))
                self.close()
                return
            # Not idle long enough yet (the handshake's timer fired, or a request ended
            # since): checked again at the deadline. At least a millisecond on: uvloop's
            # clock counts whole milliseconds, so a timer may fire a hair before a deadline
            # and, re-armed for it, fire again at once until the clock ticks.
            self._timer = loop.call_at(max(self._idle_deadline, now + 0.001),
                                       self._on_idle_check)
            return
        elif self._http is not None:
            self._fail_stalled_bodies(now)
        self._timer = loop.call_at(max(self._idle_deadline, now + 1.0), self._on_idle_check)

    def _fail_stalled_bodies(self, now: float) -> None:
        """``idle_timeout`` also bounds a request body: a client that owes body bytes and
        sends none for that long, while the gateway reads, gets 408 (nginx's
        client_body_timeout). While reading is paused (flow control, a late certificate in
        ``stall`` mode) the silence is the gateway's own doing and does not count."""
        if self._tls.reading_paused:
            return
        since = now - self._idle_timeout
        http = self._http
        resumed = max(self._reading_resumed_at, http.input_resumed_at)
        for body in http.bodies_in_progress():
            starved = body.starved_since
            if starved is not None and max(starved, resumed) <= since:
                log.info("no request body bytes from %s for %gs (idle_timeout): 408",
                         _address(self.info), self._idle_timeout)
                body.fail(BodyTimeout(self._idle_timeout))

    # -- PlaintextChannel (what the HTTP adapters call) ----------------------------------

    def write(self, data: bytes) -> None:
        """Encrypt and send at the end of this loop iteration: a response's head, body and
        end written in one step go out as one TLS record and one socket write, not three.
        Past _FLUSH_AT bytes they go out at once, so that a large body meets the
        transport's flow control (``drain``) instead of piling up here."""
        if self._closing:
            return
        if self._plaintext is None:
            self._plaintext = [data]
        else:
            self._plaintext.append(data)
        self._plaintext_size += len(data)
        if self._plaintext_size >= _FLUSH_AT:
            self._flush()
        else:
            self._flush_soon()

    def _encrypt_plaintext(self) -> None:
        pieces, size = self._plaintext, self._plaintext_size
        self._plaintext, self._plaintext_size = None, 0
        try:
            if len(pieces) == 1 or size > _JOIN_UNDER:
                for piece in pieces:        # large pieces: no copy to join them
                    self._tls.send(piece)
            else:
                self._tls.send(b"".join(pieces))
        except TLSError as exc:
            # OpenSSL refuses to write after some peer EOF/reset sequences: the connection
            # is over. The adapters learn it through connection_lost, as for a reset.
            log.debug("write refused on %s: %s", _address(self.info), exc)
            self.abort()

    def _flush_soon(self) -> None:
        """Send at the end of this loop iteration, together with whatever else is written
        meanwhile."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        if not self._closing:   # (close() sent everything before closing the transport)
            self._flush()

    def close(self) -> None:
        """Graceful: close_notify, then FIN once the transport's buffer is sent."""
        if self._closing:
            if not self._transport.is_closing():
                self._transport.close()  # cuts a lingering close short (server stop)
            return
        if self._plaintext is not None:
            self._encrypt_plaintext()           # what was written goes before close_notify
        self._closing = True
        self._tls.close()
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._closing = True
        self._transport.abort()

    def pause_reading(self) -> None:
        """Stop reading the socket and stop decrypting what was already read: bytes behind
        the pause point (the client's handshake answer, say) stay unprocessed, as they would
        in a server that does not read its socket."""
        if not self._closing:
            self._transport.pause_reading()
            self._tls.reading_paused = True

    def resume_reading(self) -> None:
        if not self._closing and self._tls.reading_paused:
            self._tls.reading_paused = False
            self._reading_resumed_at = self._loop.time()
            self._transport.resume_reading()
            # Records already read but left encrypted: decrypt them now, outside the
            # caller's stack (it may be the body consumer itself).
            asyncio.get_running_loop().call_soon(self._resume_tls)

    def _resume_tls(self) -> None:
        if not self._closing and not self._tls.reading_paused:
            self._process_tls()

    async def drain(self) -> None:
        if not self._write_paused:
            return
        if self._closing:
            raise ClientGone("connection closed")
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = asyncio.get_running_loop().create_future()
        await self._drain_waiter

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("request handler failed: %r", exc, exc_info=exc)

    async def client_certificate(self, request: Request) -> x509.Certificate | None:
        """The certificate for ``request``, fetched late if the handshake did not ask."""
        late = self._late
        if late is None:            # the connection is gone (or never finished its handshake)
            raise ClientGone()
        return await late.fetch(request)

    def request_started(self) -> None:
        self._active_requests += 1

    def request_finished(self) -> None:
        self._active_requests -= 1
        if self._active_requests == 0 and not self._closing:
            self._idle_deadline = self._loop.time() + self._idle_timeout

    @property
    def busy(self) -> bool:
        return self._active_requests > 0


def _address(info: ConnectionInfo | None) -> str:
    if info is None:
        return "?"
    host, port = info.client_address[:2] if info.client_address else ("?", 0)
    return f"{host}:{port}"
