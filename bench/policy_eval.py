"""Micro-benchmark: the cost of the seed's three policies (and of validate-client-certificate
as fixtures/policies/validate.xml has it) per request, without network.

Each policy runs through the real engine (``Pipeline.run``) exactly as the gateway runs it,
with a real certificate from the dev PKI, the real verifier (chain + CRL, cached per
certificate as in production) and a backend stub that answers 200 at once, so the figure is
the policy work alone. Run:

    .venv/bin/python bench/policy_eval.py [--requests 5000]

It prints microseconds per request for each policy with the valid client certificate (every
condition evaluated, Verify() answered from the cache) and with no certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsgate.config.loader import load_config
from tlsgate.http.messages import ConnectionInfo, Request, RequestBody, Response
from tlsgate.pki import init_pki
from tlsgate.server.runtime import Runtime
from tlsgate.tls.session import intern_certificate

ROOT = Path(__file__).resolve().parent.parent
POLICIES = {
    "issuer-subject": "seed-issuer-subject.xml",
    "thumbprint": "seed-thumbprint.xml",
    "deployment-thumbprint": "seed-deployment-thumbprint.xml",
    "validate-client-certificate": "validate.xml",
}
CONFIG = """
[gateway]
listen = ["127.0.0.1:0"]

[[certificate]]
id = "gateway"
file = "pki/server.pem"
key_file = "pki/server.key"

[[certificate]]
id = "dev-client"
file = "pki/client.pem"

[[ca_certificate]]
id = "root"
file = "pki/root.pem"
store = "root"

[[ca_certificate]]
id = "intermediate"
file = "pki/intermediate.pem"
store = "intermediate"

[revocation]
crl_files = ["pki/intermediate.crl"]
fetch_distribution_points = false

[[hostname]]
name = "localhost"
certificate = "gateway"
negotiate_client_certificate = true
"""


def write_setup(directory: Path) -> Path:
    pki = directory / "pki"
    init_pki(pki)
    client = json.loads((pki / "thumbprints.json").read_text())["client.pem"]
    apis = []
    for name, fixture in POLICIES.items():
        text = (ROOT / "fixtures" / "policies" / fixture).read_text()
        text = (text.replace("trusted-issuer", client["issuer"])
                .replace("expected-subject-name", client["subject"])
                .replace("DESIRED-THUMBPRINT-IN-UPPER-CASE", client["thumbprint"]))
        (directory / f"{name}.xml").write_text(text)
        apis.append(f'[[api]]\nname = "{name}"\npath = "/{name}"\nbackend = "echo:"\n'
                    f'policy = "{name}.xml"\n')
    config = directory / "gateway.toml"
    config.write_text(CONFIG + "\n" + "\n".join(apis))
    return config


def make_request(name: str, certificate: x509.Certificate | None,
                 chain: tuple[x509.Certificate, ...]) -> Request:
    info = ConnectionInfo(("127.0.0.1", 50000), sni="localhost",
                          tls_version="TLSv1.3", handshake_certificate=certificate,
                          handshake_chain=chain)
    return Request("GET", f"/{name}", "", [(b"host", b"localhost")], RequestBody.empty(),
                   info, authority="localhost")


async def measure(pipeline, name, certificate, chain, requests: int, *,
                  keep_alive: bool) -> float:
    """µs per request. ``keep_alive``: every request on one connection (its certificate
    view reused); else each request on a new connection, with the certificate objects a new
    TLS handshake would give (interned by DER, as tlsgate.tls.session does)."""
    async def forward(_request, _timeout, _dynamic):
        return Response(200, [(b"content-length", b"0")], b"")

    expected = 200 if certificate is not None else 403
    first = make_request(name, certificate, chain)
    outcome = await pipeline.run(first, forward)
    assert outcome.response.status == expected, (name, outcome.response.status, outcome.reason)
    if keep_alive:
        batch = [make_request(name, certificate, chain) for _ in range(requests)]
        for request in batch:
            request.connection = first.connection
    else:
        batch = [make_request(name, *_fresh_copies(certificate, chain))
                 for _ in range(requests)]
    started = time.perf_counter()
    for request in batch:
        await pipeline.run(request, forward)
    return (time.perf_counter() - started) / requests * 1e6


def _fresh_copies(certificate, chain):
    """What a new TLS connection hands the pipeline: the certificates as the TLS layer
    interns them (one object per DER), on a new ConnectionInfo (see make_request)."""
    if certificate is None:
        return None, ()
    der = serialization.Encoding.DER
    return (intern_certificate(certificate.public_bytes(der)),
            tuple(intern_certificate(c.public_bytes(der)) for c in chain))


async def main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_setup(Path(tmp)))
        runtime = Runtime.build(config)
        pki = Path(tmp) / "pki"
        leaf, *chain = x509.load_pem_x509_certificates((pki / "client.pem").read_bytes())
        print("| policy | client | connection | µs per request | requests measured |")
        print("|---|---|---|---:|---:|")
        for name in POLICIES:
            pipeline = runtime.policies.pipeline(name)
            for label, cert, intermediates in (("valid certificate", leaf, tuple(chain)),
                                               ("no certificate", None, ())):
                for keep_alive in (False, True):
                    micros = await measure(pipeline, name, cert, intermediates, requests,
                                           keep_alive=keep_alive)
                    how = "keep-alive" if keep_alive else "new per request"
                    print(f"| {name} | {label} | {how} | {micros:.1f} | {requests:,} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="per measurement")
    asyncio.run(main(parser.parse_args().requests))
