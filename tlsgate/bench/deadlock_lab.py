"""The deadlock matrix's laboratory: a dev PKI, body files and one gateway subprocess.

One gateway serves every mode of the matrix through one SNI name per mode
(``stall.gw.localhost``, ``buffer.gw.localhost``, ``spool.gw.localhost`` and
``handshake.gw.localhost``, all covered by the dev server certificate's ``*.gw.localhost``), each
with the thumbprint policy of the seed on ``/echo``. It runs as ``python -m tlsgate serve`` in
its own process (its own interpreter and GIL, as in production), listens on an ephemeral
loopback port and logs to ``gateway.log`` in the work directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tlsgate.pki import init_pki

#: The hostname (SNI) that selects each mode.
HOST_SUFFIX = "gw.localhost"
ON_DEMAND_MODES = ("stall", "buffer", "spool")

# The seed's thumbprint policy, verbatim but for the thumbprint literal (no Verify(): the
# matrix is about getting the certificate, not about trusting it).
POLICY = """<policies>
  <inbound>
    <choose>
        <when condition="@(context.Request.Certificate == null || context.Request.Certificate.Thumbprint != &quot;{thumbprint}&quot;)" >
            <return-response>
                <set-status code="403" reason="Invalid client certificate" />
            </return-response>
        </when>
    </choose>
  </inbound>
</policies>
"""  # noqa: E501 (the seed's condition, verbatim)

GATEWAY = """\
[gateway]
listen = ["127.0.0.1:0"]
data_dir = "{data}"
min_tls = "1.2"
max_tls = "1.3"
idle_timeout = {idle}

[[certificate]]
id = "gateway"
file = "{pki}/server.pem"
key_file = "{pki}/server.key"

[[ca_certificate]]
id = "root"
file = "{pki}/root.pem"
store = "root"
"""

HOSTNAME = """
[[hostname]]
name = "{name}"
certificate = "gateway"
negotiate_client_certificate = {negotiate}
http2 = true
on_demand_body = "{body_mode}"
on_demand_timeout = {timeout}
"""

API = """
[[api]]
name = "echo"
path = "/echo"
backend = "echo:"
policy = "{policy}"
max_body_size = 104857600
"""

_LISTENING = re.compile(r"tlsgate listening on 127\.0\.0\.1:(\d+)")


def hostname(mode: str) -> str:
    return f"{mode}.{HOST_SUFFIX}"


@dataclass(frozen=True)
class BodyFile:
    """A request body written once per size; clients read it from disk."""

    path: Path
    size: int
    sha256: str


def write_body(directory: Path, size: int) -> BodyFile:
    """``size`` random bytes in ``directory``, written and hashed 1 MiB at a time."""
    path = directory / f"body-{size}.bin"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, 1 << 20))
            digest.update(block)
            out.write(block)
            remaining -= len(block)
    return BodyFile(path, size, digest.hexdigest())


def gateway_config(data: Path, pki: Path, policy: Path, modes: list[str],
                   timeout: float) -> str:
    """The TOML text of the matrix's gateway: one hostname per mode."""
    text = GATEWAY.format(data=data, pki=pki, idle=max(30, 4 * timeout))
    for mode in modes:
        text += HOSTNAME.format(
            name=hostname(mode),
            negotiate="true" if mode == "handshake" else "false",
            body_mode=mode if mode in ON_DEMAND_MODES else "spool",
            timeout=timeout)
    return text + API.format(policy=policy)


class Lab:
    """Context manager: PKI, body files and a running gateway in ``workdir``."""

    def __init__(self, workdir: Path, *, modes: list[str], sizes: list[int],
                 timeout: float) -> None:
        self.workdir = workdir
        self.modes = modes
        self.sizes = sizes
        self.timeout = timeout
        self.pki = workdir / "pki"
        self.log_path = workdir / "gateway.log"
        self.bodies: dict[int, BodyFile] = {}
        self.thumbprint = ""
        self.port = 0
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Lab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        init_pki(self.pki)
        self.thumbprint = json.loads(
            (self.pki / "thumbprints.json").read_text())["client.pem"]["thumbprint"]
        bodies = self.workdir / "bodies"
        bodies.mkdir(exist_ok=True)
        self.bodies = {size: write_body(bodies, size) for size in self.sizes}
        self._start_gateway(self._write_config())
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        policy = self.workdir / "thumbprint-policy.xml"
        policy.write_text(POLICY.replace("{thumbprint}", self.thumbprint))
        config = self.workdir / "gateway.toml"
        config.write_text(gateway_config(data, self.pki, policy, self.modes, self.timeout))
        return config

    def _start_gateway(self, config: Path) -> None:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tlsgate", "serve", "--config", str(config),
                 "--log-level", "info"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir)
        self.port = self._wait_for_port(deadline=time.monotonic() + 30)

    def _wait_for_port(self, deadline: float) -> int:
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the gateway did not start; its log ends with:\n{tail}")

    def problems(self) -> list[str]:
        """What went wrong inside the gateway: an exit, ERROR lines, tracebacks."""
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines()
                 if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]
        if self._process is not None and self._process.poll() is not None:
            lines.append(f"the gateway exited with status {self._process.returncode} "
                         "before the matrix ended")
        return lines

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
