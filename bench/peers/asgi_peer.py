"""The hypercorn or uvicorn peer of ``tlsgate bench --peers`` (started by tlsgate/bench/peers.py).

    python asgi_peer.py hypercorn|uvicorn PORT PKI_DIR CA_AND_CRL_FILE

Configured like the tlsgate bench gateway: one process, uvloop, TLS 1.3 only, the dev PKI's
ECDSA server certificate, client certificate REQUIRED (``cert_reqs`` = CERT_REQUIRED) and
verified against root + intermediate (``ca_certs``) with the intermediate's CRL
(VERIFY_CRL_CHECK_LEAF: neither server has a CRL flag of its own, hence this launcher rather
than the plain command lines). Serves asgi_app.app: 200 'ok'.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asgi_app import app  # noqa: E402


def _tighten(context: ssl.SSLContext, ca_and_crl: str) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=ca_and_crl)      # certificates and the CRL
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    # sessions in OpenSSL's server-side cache, no tickets: as every server in the comparison
    context.options |= ssl.OP_NO_TICKET
    return context


def hypercorn(port: int, pki: Path, ca_and_crl: str) -> None:
    import asyncio

    import uvloop
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    class BenchConfig(Config):
        def create_ssl_context(self):
            return _tighten(super().create_ssl_context(), ca_and_crl)

    config = BenchConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile = str(pki / "server.pem")
    config.keyfile = str(pki / "server.key")
    config.ca_certs = ca_and_crl
    config.verify_mode = ssl.CERT_REQUIRED
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.keep_alive_timeout = 75
    uvloop.install()
    asyncio.run(serve(app, config))


def uvicorn(port: int, pki: Path, ca_and_crl: str) -> None:
    import uvicorn as uv

    config = uv.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                       ssl_certfile=str(pki / "server.pem"), ssl_keyfile=str(pki / "server.key"),
                       ssl_ca_certs=ca_and_crl, ssl_cert_reqs=ssl.CERT_REQUIRED,
                       access_log=False, log_level="warning", lifespan="off",
                       timeout_keep_alive=75, workers=1)
    config.load()
    _tighten(config.ssl, ca_and_crl)
    uv.Server(config).run()


if __name__ == "__main__":
    name, port, pki, ca_and_crl = sys.argv[1:5]
    {"hypercorn": hypercorn, "uvicorn": uvicorn}[name](int(port), Path(pki), ca_and_crl)
