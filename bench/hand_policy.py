"""Experiment: the seed's thumbprint policy written by hand, in place of the policy engine.

What would a policy compiled to Python code save in the server? This runs ``tlsgate serve``
with one API's policy replaced by the same checks written by hand: the handshake's
certificate, ``Verify()`` through the gateway's own CertificateVerifier (chain and CRL,
cached as the engine's are), the thumbprint compared, then a 403 or the API's backend. Other
APIs are served as usual. Not part of tlsgate: it patches ``Gateway._respond`` and knows
nothing of late certificates or of any other policy.

    taskset -c 0 .venv/bin/python bench/hand_policy.py --api echo --thumbprint HEX \\
        serve --config bench-gateway.toml --log-level warning &
    taskset -c 1 .venv/bin/tlsgate bench --target https://localhost:8443/echo --mode h1 \\
        --server-pid $!

Session of 2026-11-29 22:48 (3bba6a0, keep-alive HTTP/1.1, server CPU per request): seed
policy through the engine 75 µs, by hand 55 µs, an API without a policy 53 µs.
"""

from __future__ import annotations

import argparse
import sys

from tlsgate.certs.identity import thumbprint as thumbprint_of
from tlsgate.cli import main as tlsgate_main
from tlsgate.http.messages import Response
from tlsgate.pipeline import gateway


def patch(api_name: str, expected_thumbprint: str) -> None:
    engine_respond = gateway.Gateway._respond
    engine_init = gateway.Gateway.__init__
    thumbprints: dict[int, tuple[object, str]] = {}

    def __init__(self, config, selector, *, policies=None) -> None:
        engine_init(self, config, selector, policies=policies)
        self.hand_verifier = policies.env.verifier if policies is not None else None

    async def _respond(self, request, route, progress):
        if route is None or route.api.name != api_name:
            return await engine_respond(self, request, route, progress)
        info = request.connection
        certificate = info.handshake_certificate
        if certificate is not None:
            known = thumbprints.get(id(certificate))
            if known is None or known[0] is not certificate:
                known = thumbprints[id(certificate)] = (certificate,
                                                        thumbprint_of(certificate))
            if known[1] == expected_thumbprint and self.hand_verifier.verify(
                    certificate, tuple(info.handshake_chain)).ok:
                return await route.backend.handle(request)
        return Response(403, [(b"content-length", b"0")], b"",
                        reason=b"Invalid client certificate")

    gateway.Gateway.__init__ = __init__
    gateway.Gateway._respond = _respond


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True, help="the API whose policy is replaced")
    parser.add_argument("--thumbprint", required=True, help="the client's, upper-case hex")
    parser.add_argument("tlsgate_args", nargs=argparse.REMAINDER,
                        help="tlsgate's own arguments, e.g. serve --config FILE")
    args = parser.parse_args()
    patch(args.api, args.thumbprint.upper())
    sys.argv = ["tlsgate", *args.tlsgate_args]
    tlsgate_main()


if __name__ == "__main__":
    main()
