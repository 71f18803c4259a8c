"""Names and defaults shared by the load generator's modules and its command line.

Kept free of heavy imports (h2, OpenSSL) so that ``tlsgate --help`` and the CLI's argument
parser stay quick: :mod:`tlsgate.bench.load_cli` builds the flags from these alone.
"""

from __future__ import annotations

#: ``handshake``: a new connection per request, full handshake; ``resume``: the same with
#: session resumption; ``h1``: keep-alive HTTP/1.1; ``h2``: HTTP/2 streams; ``upload``: POSTs;
#: ``idle``: connections opened (one GET each) then held idle, server RSS per connection.
MODES = ("handshake", "resume", "h1", "h2", "upload", "idle")
HANDSHAKE_MODES = ("handshake", "resume")
PERSISTENT_MODES = ("h1", "h2", "upload")
ERROR_KINDS = ("connect_refused", "connect", "tls", "http_status", "timeout", "closed",
               "protocol")
TLS_LIBS = ("auto", "ssl", "pyopenssl")
#: Key exchange offered by the pyOpenSSL client. Its OpenSSL (4.x) would otherwise offer the
#: hybrid X25519MLKEM768 first, which a server on the same OpenSSL accepts and one on the
#: system's OpenSSL 3.0 (nginx, HAProxy, the ssl module) cannot: pinning X25519 keeps the
#: handshake work the same for every server compared (a key share is sent for the first group
#: only). P-256 stays listed because TLS 1.2 needs the curve of an ECDSA server certificate in
#: the client's groups. None: the library's default.
DEFAULT_GROUPS = "X25519:P-256"
DEFAULT_CONNECTIONS = 10
DEFAULT_STREAMS = 10
DEFAULT_SIZE = 1_000_000
#: idle: connections opening at once (per generator, split over its workers), so the server's
#: accept queue is not overwhelmed; seconds to let the server settle before its RSS is read.
IDLE_CONCURRENCY = 200
IDLE_SETTLE = 2.0
