"""Micro-benchmark: the server side of one full TLS 1.3 mutual-TLS handshake, in memory.

A stdlib ``ssl`` client (the system's OpenSSL, offering X25519 like the bench's clients)
presents the dev PKI's client certificate to tlsgate's :class:`~tlsgate.tls.session.TLSSession`
over memory BIOs; only the server's calls are timed (``receive_data``, ``next_events``,
``data_to_send``): the ClientHello read and the OpenSSL connection made on the hostname's
context, the server's first flight, then the client's certificate, CertificateVerify and
Finished up to ``HandshakeCompleted`` (certificate fetched and interned) and the session
tickets. No socket, no event loop, no HTTP: the TLS layer alone, within ~1 % from run to run,
where ``tlsgate bench --mode handshake`` (±3 %) cannot resolve a change of 10 µs.
Run:

    .venv/bin/python bench/handshake_eval.py [--handshakes 1500] [--runs 3] [--tickets]

It prints µs per handshake, split into the two client flights. ``--tickets`` turns on
stateless session tickets (the default of ``[gateway] session_tickets``); without it the
sessions stay in the server's cache, as in the bench's tlsgate configuration.
"""

from __future__ import annotations

import argparse
import ssl
import tempfile
import time
from pathlib import Path

from policy_eval import CONFIG

from tlsgate.config.loader import load_config
from tlsgate.pki import init_pki
from tlsgate.tls.contexts import TLSContexts
from tlsgate.tls.session import HandshakeCompleted, TLSSession

GATEWAY_TLS = 'min_tls = "1.3"\nsession_tickets = {tickets}\n'


def make_contexts(directory: Path, tickets: bool) -> TLSContexts:
    init_pki(directory / "pki")
    config = directory / "gateway.toml"
    config.write_text(CONFIG.replace("[gateway]\n", "[gateway]\n" + GATEWAY_TLS.format(
        tickets="true" if tickets else "false"), 1))
    return TLSContexts(load_config(config))


def client_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki / "root.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def one_handshake(contexts: TLSContexts, client_ctx: ssl.SSLContext) -> list[float]:
    """Seconds the server spent on each client flight that reached it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    server = TLSSession(contexts)
    spent: list[float] = []
    completed = False
    client_done = False
    while not (client_done and completed):
        try:
            client.do_handshake()
            client_done = True
        except ssl.SSLWantReadError:
            pass
        flight = outgoing.read()
        if not flight:
            raise AssertionError("the handshake stalled")
        started = time.perf_counter()
        server.receive_data(flight)
        events = server.next_events()
        reply = server.data_to_send()
        spent.append(time.perf_counter() - started)
        completed = completed or any(isinstance(e, HandshakeCompleted) for e in events)
        if reply:
            incoming.write(reply)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tickets", action="store_true",
                        help="stateless session tickets (session_tickets = true)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        contexts = make_contexts(Path(directory), args.tickets)
        client_ctx = client_context(Path(directory) / "pki")
        for _ in range(50):                                  # warm-up
            one_handshake(contexts, client_ctx)
        for number in range(1, args.runs + 1):
            flights = [one_handshake(contexts, client_ctx) for _ in range(args.handshakes)]
            first = sum(f[0] for f in flights) / len(flights) * 1e6
            rest = sum(sum(f[1:]) for f in flights) / len(flights) * 1e6
            print(f"run {number}: {first + rest:.1f} µs per handshake (ClientHello "
                  f"{first:.1f} µs, certificate + Finished {rest:.1f} µs)")


if __name__ == "__main__":
    main()
