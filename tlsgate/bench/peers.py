"""Peers of ``tlsgate bench --peers``: nginx, HAProxy, hypercorn, uvicorn — and tlsgate itself —
started on a free loopback port, configured alike, and stopped by the bench.

    with start_backend() as backend, start_peer("nginx", pki, backend.port) as nginx:
        nginx.url, nginx.pid        # https://localhost:PORT, the server's pid (CPU accounting)

Every server gets the same setup (templates in ``bench/peers/``): TLS 1.3, the dev PKI's ECDSA
P-256 server certificate, a client certificate REQUIRED and verified against the dev root +
intermediate with the CRL, one server process/thread (one core), 200 'ok' on any path but
``/upload``, which goes to the same plain ``http://`` sink backend (``bench/peers/sink_backend.py``)
for every server. tlsgate runs the seed's thumbprint policy (``Verify()``: chain and CRL) in front
of its echo backend on ``/echo``. Servers are pinned to core 0 with ``taskset -c 0`` when the
machine has two cores or more (the generator takes the others).

nginx/HAProxy come from Debian (``apt-get install nginx haproxy``, done here when missing and
running as root); hypercorn/uvicorn (+ httptools) are pip-installed into this interpreter's
environment when missing — they are not tlsgate dependencies.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template

REPO = Path(__file__).resolve().parents[2]
PEER_DIR = REPO / "bench" / "peers"
SEED_THUMBPRINT_POLICY = REPO / "fixtures" / "policies" / "seed-thumbprint.xml"

PEERS = ("nginx", "haproxy", "hypercorn", "uvicorn")
ALL_MODES = ("handshake", "resume", "h1", "h2", "upload")
#: Modes a peer cannot serve (uvicorn speaks no HTTP/2).
UNSUPPORTED: dict[str, tuple[str, ...]] = {"uvicorn": ("h2",)}
#: What the peer does on /upload.
UPLOAD_NOTE = {"nginx": "proxy_pass to the sink", "haproxy": "proxied to the sink",
               "hypercorn": "ASGI app drains the body (no proxy)",
               "uvicorn": "ASGI app drains the body (no proxy)",
               "tlsgate": "policy, then proxied to the sink"}
_PIP = {"hypercorn": ["hypercorn"], "uvicorn": ["uvicorn", "httptools"]}
_READY_TIMEOUT = 30.0


@dataclass
class RunningServer:
    """A server the bench started (or was pointed at): stop() ends it and removes its files."""

    name: str
    url: str                      # https://localhost:PORT (http:// for the sink backend)
    pid: int
    port: int
    version: str = ""
    modes: tuple[str, ...] = ALL_MODES
    process: subprocess.Popen | None = None
    workdir: Path | None = None
    command: list[str] = field(default_factory=list)

    def path_url(self, mode: str) -> str:
        return self.url + ("/upload" if mode == "upload" else "/echo")

    def log_tail(self, lines: int = 20) -> str:
        log = self.workdir / "server.log" if self.workdir else None
        if log is None or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)    # its own session (see _spawn)
                process.wait(5)
        if process is not None:
            # nginx workers and the like: anything left in the session we created.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- availability ------------------------------------------------------------------------------

def _binary(name: str) -> str | None:
    """nginx/haproxy live in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


def missing(name: str) -> str | None:
    """Why peer ``name`` cannot start here (None when it can)."""
    if name in ("nginx", "haproxy"):
        return None if _binary(name) else f"{name} is not installed (apt-get install {name})"
    if name in _PIP:
        for module in ("uvloop", *_PIP[name]):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install {' '.join(_PIP[name])})"
        return None
    if name == "tlsgate":
        return None
    return f"unknown peer {name!r}: choose from {', '.join(PEERS)}"


def ensure(name: str, *, install: bool = True) -> str | None:
    """Install peer ``name`` when missing (apt-get as root for nginx/haproxy, pip for the ASGI
    servers); return why it is still unavailable, or None."""
    why = missing(name)
    if why is None or not install or name not in (*PEERS,):
        return why
    if name in _PIP:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", *_PIP[name]],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        importlib.invalidate_caches()
    elif os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", name], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return missing(name)


def version(name: str) -> str:
    try:
        if name == "nginx":
            out = subprocess.run([_binary("nginx") or "nginx", "-v"], capture_output=True,
                                 text=True).stderr
            return out.strip().split("/", 1)[-1]
        if name == "haproxy":
            out = subprocess.run([_binary("haproxy") or "haproxy", "-v"], capture_output=True,
                                 text=True).stdout
            return out.split()[2]
        if name == "tlsgate":
            return importlib.metadata.version("tlsgate")
        return importlib.metadata.version(name)
    except (OSError, IndexError, importlib.metadata.PackageNotFoundError):
        return "?"


# -- helpers -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin_prefix(cpu: str | None = "0") -> list[str]:
    """``taskset -c CPU`` when there is a core left over for the generator, else nothing."""
    if cpu is None or not shutil.which("taskset") or len(os.sched_getaffinity(0)) < 2:
        return []
    return ["taskset", "-c", cpu]


def _render(template: str, target: Path, **fields: object) -> Path:
    text = Template((PEER_DIR / template).read_text()).substitute(
        {k: str(v) for k, v in fields.items()})
    target.write_text(text)
    return target


def _root_crl(pki: Path) -> bytes:
    """An empty CRL of the dev root (PEM): OpenSSL in nginx/HAProxy checks CRLs for every CA of
    the chain (CRL_CHECK_ALL) and would refuse every client without one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    root = x509.load_pem_x509_certificate((pki / "root.pem").read_bytes())
    key = serialization.load_pem_private_key((pki / "root.key").read_bytes(), None)
    now = datetime.now(UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root.subject)
           .last_update(now - timedelta(hours=1)).next_update(now + timedelta(days=30))
           .sign(key, hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.PEM)


def _spawn(name: str, command: list[str], workdir: Path, port: int, *, scheme: str = "https",
           server_version: str = "", modes: tuple[str, ...] = ALL_MODES) -> RunningServer:
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - the child keeps it
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=workdir,
                                   start_new_session=True)
    finally:
        log.close()
    server = RunningServer(name, f"{scheme}://localhost:{port}", process.pid, port,
                           server_version, modes, process, workdir, command)
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        if process.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise RuntimeError(f"{name} exited with status {process.returncode} while starting:"
                               f"\n{tail}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return server
        if time.monotonic() > deadline:
            tail = server.log_tail()
            server.stop()
            raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within "
                               f"{_READY_TIMEOUT:.0f} s:\n{tail}")
        time.sleep(0.05)


def _workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"tlsgate-bench-{name}-"))


# -- starting ----------------------------------------------------------------------------------

def start_backend(cpu: str | None = None) -> RunningServer:
    """The plain http:// sink every server's /upload goes to (unpinned by default)."""
    port, workdir = free_port(), _workdir("sink")
    command = [*pin_prefix(cpu), sys.executable, str(PEER_DIR / "sink_backend.py"), str(port)]
    return _spawn("sink", command, workdir, port, scheme="http")


def start_peer(name: str, pki: Path, backend_port: int | None = None, *,
               cpu: str | None = "0") -> RunningServer:
    """Start peer ``name`` (one of :data:`PEERS`) on a free loopback port; RuntimeError if it
    cannot (use :func:`ensure` first to install it)."""
    why = missing(name)
    if why is not None:
        raise RuntimeError(why)
    pki = Path(pki).resolve()
    port, workdir = free_port(), _workdir(name)
    backend_port = backend_port or free_port()     # nothing listens: /upload then fails
    try:
        crl = (pki / "intermediate.crl").read_bytes()
        pin = pin_prefix(cpu)
        if name == "tlsgate":
            return _start_tlsgate(pki, port, workdir, backend_port, pin)
        if name in ("nginx", "haproxy"):
            (workdir / "crl.pem").write_bytes(crl + _root_crl(pki))
        if name == "nginx":
            conf = _render("nginx.conf", workdir / "nginx.conf", dir=workdir, pki=pki,
                           port=port, backend_port=backend_port)
            command = [*pin, _binary("nginx") or "nginx", "-p", str(workdir), "-c", str(conf),
                       "-e", str(workdir / "error.log")]
            # -e exists from nginx 1.19.5; the error log otherwise starts in the default path
        elif name == "haproxy":
            (workdir / "server-combined.pem").write_bytes(
                (pki / "server.pem").read_bytes() + (pki / "server.key").read_bytes())
            conf = _render("haproxy.cfg", workdir / "haproxy.cfg", dir=workdir, pki=pki,
                           port=port, backend_port=backend_port)
            command = [*pin, _binary("haproxy") or "haproxy", "-db", "-f", str(conf)]
        else:
            bundle = workdir / "ca-and-crl.pem"
            bundle.write_bytes((pki / "ca-bundle.pem").read_bytes() + crl)
            command = [*pin, sys.executable, str(PEER_DIR / "asgi_peer.py"), name, str(port),
                       str(pki), str(bundle)]
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    modes = tuple(m for m in ALL_MODES if m not in UNSUPPORTED.get(name, ()))
    return _spawn(name, command, workdir, port, server_version=version(name), modes=modes)


def _start_tlsgate(pki: Path, port: int, workdir: Path, backend_port: int,
                   pin: list[str]) -> RunningServer:
    client = json.loads((pki / "thumbprints.json").read_text())["client.pem"]["thumbprint"]
    policy = SEED_THUMBPRINT_POLICY.read_text()
    placeholder = '"DESIRED-THUMBPRINT-IN-UPPER-CASE"'
    assert policy.count(placeholder) == 1
    (workdir / "thumbprint.xml").write_text(policy.replace(placeholder, f'"{client}"'))
    conf = _render("tlsgate.toml", workdir / "gateway.toml", dir=workdir, pki=pki, port=port,
                   backend_port=backend_port)
    command = [*pin, sys.executable, "-m", "tlsgate", "serve", "--config", str(conf),
               "--log-level", "warning"]
    return _spawn("tlsgate", command, workdir, port, server_version=version("tlsgate"))


def external(url: str, pid: int | None) -> RunningServer:
    """A tlsgate the user started (``--target`` + ``--server-pid``): never stopped by us."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    server = RunningServer("tlsgate", base, pid or 0, parts.port or 443, version("tlsgate"))
    path = parts.path or "/echo"
    server.path_url = lambda mode: base + ("/upload" if mode == "upload" else path)  # type: ignore[method-assign]
    return server
