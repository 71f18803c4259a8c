"""The command line as users run it: real processes, real signals, real TLS clients.

``tlsgate pki init``, ``tlsgate check-config`` and ``tlsgate serve`` run as subprocesses; the
served gateway is driven with curl and Python's ssl/http.client, reloaded with SIGHUP and
stopped with SIGTERM/SIGINT. Readiness is polled by connecting, never guessed with sleeps.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpclients
import pytest
from conftest import SERVER_CERTIFICATE_AND_ROOT, require_tool

from tlsgate.pki import FILES

ROOT = Path(__file__).resolve().parents[1]
TLSGATE = [str(Path(sys.executable).with_name("tlsgate"))]
PYTHON_M = [sys.executable, "-m", "tlsgate"]
TIMEOUT = 15.0  # generous upper bound for anything that should take well under a second

SERVE_CONFIG = """\
[gateway]
listen = ["127.0.0.1:{port}"]
data_dir = "data"
handshake_timeout = 5
{extra_gateway}""" + SERVER_CERTIFICATE_AND_ROOT + """
[[hostname]]
name = "localhost"
certificate = "gateway"
negotiate_client_certificate = true

[[hostname]]
name = "default"
certificate = "gateway"
negotiate_client_certificate = true

[[api]]
name = "echo"
path = "/echo"
backend = "echo:"
{extra}"""

SECOND_API = """
[[api]]
name = "second"
path = "/second"
backend = "echo:"
"""


# -- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_serve_config(path: Path, pki: Path, port: int, *, extra: str = "",
                       extra_gateway: str = "") -> Path:
    path.write_text(SERVE_CONFIG.format(port=port, pki=pki, extra=extra,
                                        extra_gateway=extra_gateway))
    return path


def run_cli(*args: str, cwd: Path | None = None, command=TLSGATE) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def no_traceback(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output, output


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


class Served:
    """A ``tlsgate serve`` subprocess whose stderr goes to a file the test can read."""

    def __init__(self, proc: subprocess.Popen, log_path: Path, port: int) -> None:
        self.proc = proc
        self.log_path = log_path
        self.port = port

    @property
    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"tlsgate exited ({self.proc.returncode}) before logging {text!r}:"
                            f"\n{self.stderr}")
            return self.stderr.count(text) >= count
        wait_for(seen, f"{text!r} in the log")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tlsgate did not exit within {timeout} s:\n{self.stderr}")


@contextmanager
def serve(config: Path, *, command=TLSGATE, cwd: Path | None = None,
          port: int | None = None) -> Iterator[Served]:
    """Start ``serve --config CONFIG`` and wait until it listens (logged and connectable)."""
    log_path = (cwd or Path()) / config.with_name(f"serve-{time.monotonic_ns()}.log")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([*command, "serve", "--config", str(config)], cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                start_new_session=True)
    served = Served(proc, log_path, port)
    try:
        served.wait_log("listening on")
        if port is not None:
            wait_for(lambda: port_open(port), f"port {port}")
        yield served
    finally:
        # The whole session: workers too, even if their parent is already gone.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def client_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "root.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return ctx


def https_get(pki: Path, port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=client_context(pki),
                                       timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def curl(pki: Path, port: int, path: str) -> tuple[int, str]:
    """``curl`` with the dev client certificate: (status, body)."""
    result = httpclients.curl(port, pki, "-w", "\n%{http_code}", path=path, text=True,
                              timeout=10)
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def assert_echo_saw_client(body: str) -> None:
    echo = json.loads(body)
    assert echo["client_certificate"] is not None, echo
    assert "CN=client-valid" in echo["client_certificate"]["subject"], echo


def children_of(pid: int) -> list[int]:
    """Child pids of ``pid``, from /proc (no psutil)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def process_alive(pid: int) -> bool:
    """True for a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def listening_inodes(port: int) -> set[str]:
    """Inodes of the IPv4 sockets listening on ``port`` (state 0A in /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    return inodes


def sigpipe_ignored(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigIgn:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(mask & (1 << (signal.SIGPIPE - 1)))


def write_weak_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA-1024 server certificate: well-formed, but below the security level
    of a current OpenSSL (skips when this OpenSSL still accepts it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    from OpenSSL import SSL

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256()))
    try:
        SSL.Context(SSL.TLS_METHOD).use_certificate(cert)
        pytest.skip("this OpenSSL accepts RSA-1024 server certificates")
    except SSL.Error:
        pass
    cert_path, key_path = directory / "weak.pem", directory / "weak.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# -- pki init -----------------------------------------------------------------------------


def test_pki_init_lists_files_keeps_them_and_force_regenerates(tmp_path: Path) -> None:
    target = tmp_path / "pki"
    first = run_cli("pki", "init", str(target))
    assert first.returncode == 0, first.stderr
    no_traceback(first.stdout, first.stderr)
    for name in FILES:
        assert (target / name).is_file(), name
        assert re.search(rf"^{re.escape(name)}\s+\S*{re.escape(name)}$", first.stdout, re.M), \
            f"{name} not listed:\n{first.stdout}"
    snapshot = {name: ((target / name).read_bytes(), (target / name).stat().st_mtime_ns)
                for name in FILES}

    second = run_cli("pki", "init", str(target))
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert {name: ((target / name).read_bytes(), (target / name).stat().st_mtime_ns)
            for name in FILES} == snapshot

    forced = run_cli("pki", "init", "--force", str(target))
    assert forced.returncode == 0, forced.stderr
    for name in ("root.pem", "root.key", "server.pem", "client.pem", "client.pfx"):
        assert (target / name).read_bytes() != snapshot[name][0], f"{name} not regenerated"
    assert (target / "server.key").stat().st_mode & 0o777 == 0o600


# -- check-config -------------------------------------------------------------------------


def make_dev_layout(base: Path, pki: Path) -> Path:
    """What ``make run`` creates: .tlsgate/pki + .tlsgate/gateway.toml (the bundled default)."""
    dev = base / ".tlsgate"
    shutil.copytree(pki, dev / "pki")
    config = dev / "gateway.toml"
    shutil.copy(ROOT / "tlsgate" / "defaults" / "gateway.toml", config)
    return config


def test_check_config_accepts_the_bundled_default(tmp_path: Path, pki: Path) -> None:
    config = make_dev_layout(tmp_path, pki)
    result = run_cli("check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    # The same file without its PKI is an error, so the OK above means something.
    shutil.rmtree(config.parent / "pki")
    assert run_cli("check-config", str(config)).returncode == 2


BROKEN_CONFIG = """\
[gateway]
listen = ["127.0.0.1:8443"]
listne = ["127.0.0.1:9443"]
handshake_timeout = "10"
min_tls = "1.1"

[[certificate]]
id = "gateway"
file = "{pki}/server.pem"
key_file = "{pki}/server.key"

[[certificate]]
id = "gone"
file = "pki/missing.pem"

[[hostname]]
name = "localhost"
certificate = "gatewy"

[[api]]
name = "echo"
path = "/echo"
backend = "echo:"
"""


def line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if needle in line)


def test_check_config_reports_every_error_with_its_position(tmp_path: Path, pki: Path) -> None:
    broken = tmp_path / "broken.toml"
    text = BROKEN_CONFIG.format(pki=pki)
    broken.write_text(text)
    result = run_cli("check-config", str(broken))
    assert result.returncode == 2, result.stdout + result.stderr
    no_traceback(result.stdout, result.stderr)
    output = result.stdout + result.stderr
    expected = [
        ("listne =", "listne"),
        ("handshake_timeout =", "handshake_timeout"),
        ("min_tls =", '"1.1"'),
        ('file = "pki/missing.pem"', "file not found"),
        ('certificate = "gatewy"', "gatewy"),
    ]
    for needle, message in expected:
        line = line_of(text, needle)
        pattern = rf"^{re.escape(str(broken))}:{line}:\d+: .*{re.escape(message)}"
        assert re.search(pattern, output, re.M), f"no error at line {line} ({needle}):\n{output}"
    assert "did you mean 'gateway'" in output  # the near-miss hint for the certificate id
    lines = [line for line in output.splitlines() if line.strip()]
    assert all(re.match(rf"{re.escape(str(broken))}:\d+:\d+: ", line) for line in lines), output

    # Well-formed files OpenSSL refuses to serve with: positioned, and exit 2 as `serve` does.
    cert_path, key_path = write_weak_certificate(tmp_path)
    weak = tmp_path / "weak.toml"
    weak_text = (SERVE_CONFIG.format(port=8443, pki=pki, extra="", extra_gateway="")
                 .replace(f"{pki}/server.pem", str(cert_path))
                 .replace(f"{pki}/server.key", str(key_path)))
    weak.write_text(weak_text)
    result = run_cli("check-config", str(weak))
    assert result.returncode == 2, result.stdout
    no_traceback(result.stdout, result.stderr)
    line = line_of(weak_text, 'certificate = "gateway"')
    assert re.search(rf"^{re.escape(str(weak))}:{line}:\d+: .*OpenSSL refuses", result.stdout,
                     re.M), result.stdout

    syntax = tmp_path / "syntax.toml"
    syntax.write_text('[gateway]\nlisten = ["127.0.0.1:8443"]\nworkers = = 2\n')
    result = run_cli("check-config", str(syntax))
    assert result.returncode == 2
    no_traceback(result.stdout, result.stderr)
    assert re.search(rf"^{re.escape(str(syntax))}:3:\d+: invalid TOML", result.stdout, re.M), \
        result.stdout + result.stderr


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    for args in (("check-config", str(missing)), ("serve", "--config", str(missing))):
        result = run_cli(*args)
        assert result.returncode == 2, args
        no_traceback(result.stdout, result.stderr)
        assert f"{missing}: config file not found" in result.stdout + result.stderr


# -- serve --------------------------------------------------------------------------------


def test_serve_reloads_on_sighup_and_stops_on_sigint(tmp_path: Path, pki: Path) -> None:
    port = free_port()
    config = write_serve_config(tmp_path / "gateway.toml", pki, port)
    with serve(config, port=port) as gw:
        assert f"listening on 127.0.0.1:{port}" in gw.stderr
        # SIGPIPE must stay ignored in a server: a write to a reset socket would kill it.
        assert sigpipe_ignored(gw.proc.pid)
        status, body = curl(pki, port, "/echo")
        assert status == 200
        assert_echo_saw_client(body)
        assert curl(pki, port, "/second")[0] == 404

        keep_alive = http.client.HTTPSConnection("localhost", port,
                                                 context=client_context(pki), timeout=TIMEOUT)
        keep_alive.request("GET", "/echo")
        response = keep_alive.getresponse()
        assert response.status == 200
        response.read()
        sock = keep_alive.sock

        # A valid new config: the new route serves, the open connection goes on.
        write_serve_config(config, pki, port, extra=SECOND_API)
        gw.signal(signal.SIGHUP)
        gw.wait_log("configuration reloaded")
        status, body = curl(pki, port, "/second")
        assert status == 200
        assert_echo_saw_client(body)
        keep_alive.request("GET", "/echo")
        response = keep_alive.getresponse()
        assert response.status == 200
        assert_echo_saw_client(response.read().decode())
        assert keep_alive.sock is sock  # same TLS connection, not a reconnect

        # A broken config: refused with its position, the running one stays.
        text = SERVE_CONFIG.format(port=port, pki=pki, extra=SECOND_API, extra_gateway="")
        text = text.replace('certificate = "gateway"\nnegotiate',
                            'certificate = "nosuch"\nnegotiate', 1)
        config.write_text(text)
        gw.signal(signal.SIGHUP)
        gw.wait_log("reload refused")
        line = line_of(text, 'certificate = "nosuch"')
        assert re.search(rf"{re.escape(str(config))}:{line}:\d+: .*nosuch", gw.stderr), gw.stderr
        assert curl(pki, port, "/second")[0] == 200
        # (An open connection keeps the runtime it started with, so /echo, not /second.)
        keep_alive.request("GET", "/echo")
        response = keep_alive.getresponse()
        assert response.status == 200
        response.read()
        assert keep_alive.sock is sock

        # A config that parses but that OpenSSL refuses: refused too, nothing changes.
        cert_path, key_path = write_weak_certificate(tmp_path)
        config.write_text(SERVE_CONFIG.format(port=port, pki=pki, extra="", extra_gateway="")
                          .replace(f"{pki}/server.pem", str(cert_path))
                          .replace(f"{pki}/server.key", str(key_path)))
        gw.signal(signal.SIGHUP)
        gw.wait_log("reload refused", count=2)
        assert "OpenSSL refuses certificate 'gateway'" in gw.stderr, gw.stderr
        assert curl(pki, port, "/second")[0] == 200
        keep_alive.close()

        gw.signal(signal.SIGINT)
        assert gw.wait_exit() == 0
        no_traceback(gw.stderr)
        assert not port_open(port)


class _SlowOrigin(http.server.BaseHTTPRequestHandler):
    delay = 1.5
    received = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).received.set()
        time.sleep(self.delay)
        body = b"slow answer"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_origin() -> Iterator[int]:
    _SlowOrigin.received = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowOrigin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_sigterm_drains_the_request_in_flight(tmp_path: Path, pki: Path, slow_origin: int) -> None:
    port = free_port()
    extra = (f'\n[[api]]\nname = "slow"\npath = "/slow"\n'
             f'backend = "http://127.0.0.1:{slow_origin}"\n')
    config = write_serve_config(tmp_path / "gateway.toml", pki, port, extra=extra)
    with serve(config, port=port) as gw:
        outcome: list = []

        def slow_request() -> None:
            try:
                outcome.append(https_get(pki, port, "/slow"))
            except Exception as exc:  # reported by the assertion below
                outcome.append(exc)

        client = threading.Thread(target=slow_request)
        client.start()
        assert _SlowOrigin.received.wait(TIMEOUT), gw.stderr
        stopped_at = time.monotonic()
        gw.signal(signal.SIGTERM)
        # Draining: no new connections, while the slow request is still being answered.
        wait_for(lambda: not port_open(port), "the listener to close", timeout=1.0)
        assert not outcome, "the slow request finished before the check"
        client.join(TIMEOUT)
        assert outcome == [(200, b"slow answer")], gw.stderr
        assert gw.wait_exit() == 0
        assert time.monotonic() - stopped_at < 5, "exit took longer than the drain needed"
        no_traceback(gw.stderr)


def test_python_m_tlsgate_serve(tmp_path: Path, pki: Path) -> None:
    port = free_port()
    config = write_serve_config(tmp_path / "gateway.toml", pki, port)
    with serve(config, command=PYTHON_M, port=port) as gw:
        status, body = curl(pki, port, "/echo")
        assert status == 200
        assert_echo_saw_client(body)
        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 0


def test_workers_share_the_port_and_stop_together(tmp_path: Path, pki: Path) -> None:
    port = free_port()
    config = write_serve_config(tmp_path / "gateway.toml", pki, port,
                                extra_gateway="workers = 2\n")
    with serve(config, port=port) as gw:
        gw.wait_log("listening on", count=2)
        workers = children_of(gw.proc.pid)
        assert len(workers) == 2, workers
        # Each worker has its own listening socket on the port (SO_REUSEPORT); the parent
        # keeps none, so a dead worker's socket would not keep receiving connections.
        listening = listening_inodes(port)
        owned = [socket_inodes(pid) & listening for pid in workers]
        assert all(len(inodes) == 1 for inodes in owned), (listening, owned)
        assert owned[0] != owned[1]
        assert not socket_inodes(gw.proc.pid) & listening

        results: list = []

        def one() -> None:
            try:
                results.append(https_get(pki, port, "/echo")[0])
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=one) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert results == [200] * 40

        # SIGHUP: the parent loads the configuration and starts a new generation of workers;
        # the previous one finishes its requests and exits.
        gw.signal(signal.SIGHUP)
        gw.wait_log("configuration reloaded", count=1)
        gw.wait_log("listening on", count=4)
        wait_for(lambda: not any(process_alive(pid) for pid in workers),
                 "the previous workers to exit", 15)
        renewed = children_of(gw.proc.pid)
        assert len(renewed) == 2 and not set(renewed) & set(workers), (workers, renewed)
        assert not socket_inodes(gw.proc.pid) & listening_inodes(port)
        assert [https_get(pki, port, "/echo")[0] for _ in range(10)] == [200] * 10
        workers = renewed

        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 0, gw.stderr
        wait_for(lambda: not any(process_alive(pid) for pid in workers), "workers to exit", 5)
        assert not port_open(port)
        no_traceback(gw.stderr)


def test_after_a_reload_every_worker_resumes_the_same_session_tickets(tmp_path: Path,
                                                                      pki: Path) -> None:
    """The workers of one generation share ticket keys (made before the fork): a TLS 1.3
    ticket from one worker resumes on the other, after a reload as before it."""
    port = free_port()
    config = write_serve_config(tmp_path / "gateway.toml", pki, port,
                                extra_gateway="workers = 2\n")
    context = client_context(pki)

    def resumed_share() -> float:
        first = http.client.HTTPSConnection("localhost", port, context=context,
                                            timeout=TIMEOUT)
        first.request("GET", "/echo")
        first.getresponse().read()              # the tickets come after the handshake
        session = first.sock.session
        first.close()
        resumed = 0
        for _ in range(30):                     # new source ports: both workers get some
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost",
                                        session=session) as sock:
                resumed += sock.session_reused
        return resumed / 30

    with serve(config, port=port) as gw:
        gw.wait_log("listening on", count=2)
        assert resumed_share() == 1.0
        previous = set(children_of(gw.proc.pid))
        gw.signal(signal.SIGHUP)
        gw.wait_log("configuration reloaded", count=1)
        gw.wait_log("listening on", count=4)
        wait_for(lambda: not set(children_of(gw.proc.pid)) & previous,
                 "the previous workers to exit", 15)
        assert resumed_share() == 1.0
        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 0, gw.stderr


def test_parent_exits_when_a_worker_dies(tmp_path: Path, pki: Path) -> None:
    port = free_port()
    config = write_serve_config(tmp_path / "gateway.toml", pki, port,
                                extra_gateway="workers = 2\n")
    with serve(config, port=port) as gw:
        gw.wait_log("listening on", count=2)
        workers = children_of(gw.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert gw.wait_exit() == 1
        wait_for(lambda: not process_alive(workers[1]), "the other worker to exit", 5)
        assert "exited" in gw.stderr


def test_config_error_at_start_exits_2_and_listens_nowhere(tmp_path: Path, pki: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    text = SERVE_CONFIG.format(port=port, pki=pki, extra="", extra_gateway="min_tls = 1.3\n")
    text = text.replace("server.key", "nosuch.key")
    config.write_text(text)
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2, result.stderr
    no_traceback(result.stdout, result.stderr)
    assert re.search(rf"^{re.escape(str(config))}:{line_of(text, 'min_tls')}:\d+: .*min_tls",
                     result.stderr, re.M), result.stderr
    assert re.search(rf"^{re.escape(str(config))}:{line_of(text, 'nosuch.key')}:\d+: ",
                     result.stderr, re.M), result.stderr
    assert "listening" not in result.stderr
    assert not port_open(port)


@pytest.mark.parametrize("workers", [1, 2])
def test_port_in_use_is_one_clear_line(tmp_path: Path, pki: Path, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_serve_config(tmp_path / "gateway.toml", pki, port,
                                    extra_gateway=f"workers = {workers}\n")
        result = run_cli("serve", "--config", str(config))
    assert result.returncode == 1, result.stderr
    no_traceback(result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "address already in use" in lines[0].lower()
    assert str(port) in lines[0]


# -- make run -----------------------------------------------------------------------------


def makefile_curl_line() -> str:
    """The curl command ``make run`` prints, with make's variables expanded."""
    if shutil.which("make"):
        dry = subprocess.run(["make", "-n", "-s", "run"], cwd=ROOT, capture_output=True,
                             text=True, timeout=30)
        assert dry.returncode == 0, dry.stderr
        text = dry.stdout
    else:
        text = (ROOT / "Makefile").read_text().replace("$(DEV)", ".tlsgate")
    lines = [line for line in text.splitlines() if "curl " in line and "https://" in line]
    assert len(lines) == 1, text
    command = lines[0][lines[0].index("curl "):].rstrip().rstrip('"')
    assert "https://localhost:8443/echo" in command
    return command


def make_run_layout(base: Path, port: int) -> Path:
    """The steps of ``make run``, in ``base``, listening on ``port`` instead of 8443."""
    result = run_cli("pki", "init", ".tlsgate/pki", cwd=base, command=PYTHON_M)
    assert result.returncode == 0, result.stderr
    text = (ROOT / "tlsgate" / "defaults" / "gateway.toml").read_text()
    assert ':8443"' in text
    text = text.replace(":8443", f":{port}")
    if not _ipv6_loopback():
        text = text.replace(f', "[::1]:{port}"', "")
    config = base / ".tlsgate" / "gateway.toml"
    config.write_text(text)
    return config


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_makefile_curl_line_names_files_that_pki_init_writes(tmp_path: Path) -> None:
    command = makefile_curl_line()
    make_run_layout(tmp_path, free_port())
    args = shlex.split(command)
    files = [args[i + 1] for i, arg in enumerate(args) if arg in ("--cacert", "--cert", "--key")]
    assert len(files) == 3, command
    for name in files:
        assert (tmp_path / name).is_file(), f"{name} from the Makefile's curl line is missing"


def test_make_run_flow_serves_the_printed_curl_command(tmp_path: Path) -> None:
    require_tool("curl")
    port = free_port()
    config = make_run_layout(tmp_path, port)
    check = run_cli("check-config", str(config))
    assert check.returncode == 0, check.stdout
    command = makefile_curl_line().replace(":8443/", f":{port}/")
    with serve(config.relative_to(tmp_path), command=PYTHON_M, cwd=tmp_path, port=port) as gw:
        result = subprocess.run(
            [*shlex.split(command), "-sS", "--max-time", "10", "-w", "\n%{http_code}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        body, _, status = result.stdout.rpartition("\n")
        assert status == "200", result.stdout
        assert_echo_saw_client(body)
        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 0


# -- reload refuses any failure (in-process: failures real files cannot provoke) -------------


def test_reload_keeps_the_running_runtime_on_any_failure(gateway, monkeypatch) -> None:
    from OpenSSL import SSL

    from tlsgate.config.errors import ConfigError
    from tlsgate.server import runtime as runtime_module

    running = gateway.server.runtime

    def openssl_fails(config):
        raise SSL.Error([("SSL routines", "", "simulated failure")])

    monkeypatch.setattr(runtime_module, "TLSContexts", openssl_fails)
    with pytest.raises(ConfigError, match="simulated failure"):
        runtime_module.Runtime.build(running.config)
    assert gateway.reload() is False
    assert gateway.server.runtime is running

    def anything_fails(config):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(runtime_module, "TLSContexts", anything_fails)
    assert gateway.reload() is False
    assert gateway.server.runtime is running

    monkeypatch.undo()
    assert gateway.reload() is True
    assert gateway.server.runtime is not running
