"""Support for the policy tests: a gateway with one API per policy document (shared by a whole
test module), curl that reports the status line, and the access log by request path."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd import RunningGateway, run_gateway, write_config

# Handshake mode on every name, the dev CA store (root + intermediate), the dev CRL, strict.
# @CERTIFICATES@, @REVOCATION@ and @APIS@ are filled in by policy_gateway().
CONFIG = """
[gateway]
listen = ["127.0.0.1:0"]
data_dir = "data"
handshake_timeout = 5
@GATEWAY@

[[certificate]]
id = "gateway"
file = "{pki}/server.pem"
key_file = "{pki}/server.key"
@CERTIFICATES@

[[ca_certificate]]
id = "root"
file = "{pki}/root.pem"
store = "root"

[[ca_certificate]]
id = "intermediate"
file = "{pki}/intermediate.pem"
store = "intermediate"

[revocation]
@REVOCATION@
fetch_distribution_points = false

[[hostname]]
name = "localhost"
certificate = "gateway"
negotiate_client_certificate = true

[[hostname]]
name = "default"
certificate = "gateway"
negotiate_client_certificate = true

@APIS@
"""

STRICT_WITH_CRL = 'mode = "strict"\ncrl_files = ["{pki}/intermediate.crl"]'
INTERMEDIATE_ISSUER = "CN=tlsgate dev intermediate CA, OU=dev, O=tlsgate, C=US"
CLIENTS = ("client", "client-expired", "client-notyet", "client-revoked", "client-selfsigned",
           "client-foreign")


@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    stderr: str = ""
    all_headers: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> dict:
        return json.loads(self.body)


class AccessLog(logging.Handler):
    """Access log lines (parsed) of the gateways running in this process."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "tlsgate.access":
            self.lines.append(json.loads(record.getMessage()))

    def find(self, path: str, timeout: float = 5.0) -> dict:
        """The line of the request to ``path`` (written just after the response went out)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if line["path"] == path:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no access log line for {path}")
            time.sleep(0.01)


@contextmanager
def access_log() -> Iterator[AccessLog]:
    logger = logging.getLogger("tlsgate.access")
    handler = AccessLog()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def api_entries(apis: dict[str, str], backend: str = "echo:") -> str:
    """``[[api]]`` entries: /NAME served by ``backend`` with policies/NAME.xml."""
    return "\n".join(
        f'[[api]]\nname = "{name}"\npath = "/{name}"\nbackend = "{backend}"\n'
        f'policy = "policies/{name}.xml"\n' for name in apis)


@contextmanager
def policy_gateway(directory: Path, pki: Path, apis: dict[str, str], *,
                   revocation: str = STRICT_WITH_CRL, certificates: str = "",
                   extra: str = "", gateway: str = "",
                   global_policy: str | None = None) -> Iterator[RunningGateway]:
    """A running gateway serving /NAME with the policy text ``apis[NAME]`` (echo backend)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policies").mkdir(exist_ok=True)
    for name, text in apis.items():
        (directory / "policies" / f"{name}.xml").write_text(text)
    body = api_entries(apis) + extra
    if global_policy is not None:
        (directory / "policies" / "_global.xml").write_text(global_policy)
        body += '\n[policies]\nglobal = "policies/_global.xml"\n'
    config = (CONFIG.replace("@CERTIFICATES@", certificates)
              .replace("@REVOCATION@", revocation).replace("@APIS@", body)
              .replace("@GATEWAY@", gateway))
    with run_gateway(write_config(directory, config, pki=pki)) as running:
        yield running


def unique(path: str) -> str:
    """``path`` with a unique last segment, to find its access log line."""
    return f"{path.rstrip('/')}/{uuid.uuid4().hex[:12]}"


def request(port: int, pki: Path, path: str, *, cert: str | Path | None = "client",
            http: str = "1.1", method: str | None = None, data: bytes | None = None,
            headers: tuple[str, ...] = (), args: tuple[str, ...] = (),
            tmp: Path | None = None, timeout: float = 20) -> Reply:
    """curl ``path`` on the gateway; ``cert`` names a dev PKI client (or is a PEM file with
    the key next to it as .key)."""
    exe = shutil.which("curl")
    assert exe, "curl is not installed"
    command = [exe, "-sS", "-i", "--max-time", str(timeout), "--cacert", str(pki / "root.pem"),
               "--http1.1" if http == "1.1" else "--http2"]
    if cert is not None:
        pem = Path(cert) if isinstance(cert, Path) else pki / f"{cert}.pem"
        command += ["--cert", str(pem), "--key", str(pem.with_suffix(".key"))]
    if method:
        command += ["-X", method]
    for header in headers:
        command += ["-H", header]
    if data is not None:
        assert tmp is not None, "a body needs a temporary folder"
        body_file = tmp / f"body-{uuid.uuid4().hex}"
        body_file.write_bytes(data)
        command += ["--data-binary", f"@{body_file}", "-H", "Expect:"]
    command += [*args, f"https://localhost:{port}{path}"]
    result = subprocess.run(command, capture_output=True, timeout=timeout + 10)
    return parse_reply(result.stdout, result.stderr.decode(errors="replace"))


def parse_reply(output: bytes, stderr: str = "") -> Reply:
    if not output:
        return Reply(0, "", {}, b"", stderr)
    while True:
        head, _, body = output.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1])
        if 100 <= status < 200 and body.startswith(b"HTTP/"):
            output = body
            continue
        break
    pairs = [tuple(part.strip() for part in line.split(":", 1)) for line in lines if ":" in line]
    headers = {name.lower(): value for name, value in pairs}
    return Reply(status, parts[2] if len(parts) > 2 else "", headers, body, stderr,
                 [(name.lower(), value) for name, value in pairs])
