"""Smoke test of ``tlsgate bench`` (tlsgate.bench.load): every mode gives figures and errors are
counted by kind. A gateway in this process, runs of about a second, never a speed assertion."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BASIC_CONFIG, on_demand_config
from gatewayd import RunningGateway, run_gateway, write_config

from tlsgate.bench import load_cli
from tlsgate.bench.load import MODES, parse_target, process_tree_cpu, run_load
from tlsgate.bench.load_report import markdown_table

QUICK = {"duration": 0.8, "warmup": 0.2, "connections": 2, "streams": 2, "size": 65536}


@pytest.fixture(scope="module")
def bench_gateway(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[
        RunningGateway]:
    directory = tmp_path_factory.mktemp("bench-gw")
    with run_gateway(write_config(directory, BASIC_CONFIG, pki=pki)) as gateway:
        yield gateway


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_produces_results(bench_gateway: RunningGateway, pki: Path, mode: str):
    result = run_load(bench_gateway.url("/echo"), mode, pki=pki, server_pid=os.getpid(),
                      **QUICK)
    assert result.requests > 0, result.error_samples
    assert result.error_total == 0, result.error_samples
    assert result.statuses == {"200": result.requests}
    latency = result.latency_ms
    assert 0 < latency["p50"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert result.requests_per_second > 0
    assert result.generator_cpu_seconds > 0
    # The gateway runs in this process: its CPU per request is reported, generator excluded.
    assert result.server_cpu_us_per_request is not None
    assert result.server_cpu_us_per_request >= 0
    assert result.tls["version"] == "TLSv1.3"
    if mode == "handshake":
        assert result.handshakes >= result.requests - 2   # in flight as the window opened
        assert result.resumption_rate == 0
    elif mode == "resume":
        assert result.resumption_rate is not None and result.resumption_rate > 0.5
    elif mode == "h2":
        assert result.tls["alpn"] == "h2"
    elif mode == "upload":
        assert result.megabytes_per_second and result.megabytes_per_second > 0
    if mode in ("h1", "h2", "upload"):
        assert result.handshakes == 0          # connections opened before the window


def test_http_status_errors_are_counted(bench_gateway: RunningGateway, pki: Path):
    result = run_load(bench_gateway.url("/no-such-api"), "h1", pki=pki,
                      **{**QUICK, "duration": 0.5, "warmup": 0})
    assert result.requests == 0
    assert result.errors["http_status"] > 0
    assert result.statuses.get("404") == result.errors["http_status"]
    assert result.latency_ms["p50"] is None


@pytest.mark.parametrize("mode", ["h1", "handshake"])
def test_connect_errors_are_counted(pki: Path, mode: str):
    result = run_load(f"https://localhost:{_closed_port()}/echo", mode, pki=pki,
                      **{**QUICK, "duration": 0.4, "warmup": 0})
    assert result.requests == 0
    assert result.errors["connect_refused"] > 0
    assert any("refused" in sample for sample in result.error_samples)


def test_tls_errors_are_counted(bench_gateway: RunningGateway, pki: Path):
    # A CA the gateway's certificate does not chain to: the client refuses the handshake.
    result = run_load(bench_gateway.url("/echo"), "handshake", pki=pki,
                      cacert=pki / "foreign-root.pem", **{**QUICK, "duration": 0.4,
                                                           "warmup": 0})
    assert result.requests == 0
    assert result.errors["tls"] > 0


def test_timeouts_are_counted(pki: Path):
    # Accepts TCP (the kernel does, from the backlog) and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        result = run_load(f"https://localhost:{port}/echo", "handshake", pki=pki,
                          timeout=0.2, **{**QUICK, "duration": 0.7, "warmup": 0})
    assert result.requests == 0
    assert result.errors["timeout"] > 0


def test_cli_writes_json_table_and_chart(bench_gateway: RunningGateway, pki: Path,
                                         tmp_path: Path, capsys: pytest.CaptureFixture):
    parser = argparse.ArgumentParser()
    load_cli.add_arguments(parser)
    out = tmp_path / "out" / "bench.json"
    args = parser.parse_args([
        "--target", bench_gateway.url("/echo"), "--mode", "h1,resume", "--pki", str(pki),
        "--duration", "0.5", "--warmup", "0", "--connections", "2",
        "--server-pid", str(os.getpid()), "--json", str(out), "--no-progress"])
    assert load_cli.main(args) == 0
    data = json.loads(out.read_text())
    assert [entry["mode"] for entry in data] == ["h1", "resume"]
    assert all(entry["requests"] > 0 and entry["server_cpu_us_per_request"] is not None
               for entry in data)
    printed = capsys.readouterr().out
    assert "| mode |" in printed and "| h1 |" in printed and "| resume |" in printed
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "chart skipped" in printed
    else:
        assert out.with_suffix(".png").stat().st_size > 0


def test_count_based_run(bench_gateway: RunningGateway, pki: Path):
    result = run_load(bench_gateway.url("/echo"), "h1", pki=pki, requests=50, warmup=0,
                      connections=2)
    assert result.requests >= 50
    assert result.error_total == 0


def test_only_loopback_is_loaded():
    target = parse_target("https://localhost:8443/echo?x=1")
    assert (target.address, target.port, target.server_hostname, target.authority,
            target.path) == ("127.0.0.1", 8443, "localhost", "localhost:8443", "/echo?x=1")
    target = parse_target("https://[::1]:9443/")
    assert (target.address, target.server_hostname) == ("::1", None)
    assert parse_target("https://api.example.com/", connect="127.0.0.1").server_hostname \
        == "api.example.com"
    for url, connect in [("https://10.0.0.1/", None), ("https://127.0.0.2/", None),
                         ("https://localhost/", "192.168.1.1"), ("http://localhost/", None),
                         ("https://example.com/", None)]:
        with pytest.raises(ValueError):
            parse_target(url, connect)
    with pytest.raises(ValueError):
        run_load("https://10.1.2.3:8443/echo", "h1", duration=0.1)


def test_server_cpu_includes_child_processes():
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass\n"
                              "print(flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE)
    try:
        child.stdout.readline()            # it has burnt its 0.3 s of CPU
        own = process_tree_cpu(child.pid)
        assert own is not None and own >= 0.25
        fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
        mine = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        assert process_tree_cpu(os.getpid()) - mine >= own - 0.02
    finally:
        child.kill()
        child.wait()
    assert process_tree_cpu(child.pid) is None
    time.sleep(0)


def test_two_worker_processes(bench_gateway: RunningGateway, pki: Path):
    result = run_load(bench_gateway.url("/echo"), "h1", pki=pki, workers=2,
                      **{**QUICK, "duration": 0.5})
    assert result.workers == 2 and result.connections == 2
    assert result.requests > 0 and result.error_total == 0
    assert result.generator_cpu_seconds > 0


@pytest.mark.parametrize("tls_lib", ["ssl", "pyopenssl"])
def test_tls12_resumption_with_either_client_library(bench_gateway: RunningGateway, pki: Path,
                                                     tls_lib: str):
    result = run_load(bench_gateway.url("/echo"), "resume", pki=pki, tls_version="1.2",
                      tls_lib=tls_lib, **{**QUICK, "duration": 0.5})
    assert result.requests > 0 and result.error_total == 0, result.error_samples
    assert result.tls["version"] == "TLSv1.2"
    assert result.tls_lib == tls_lib
    assert result.resumption_rate is not None and result.resumption_rate > 0.5


def test_idle_connections_report_server_rss(bench_gateway: RunningGateway, pki: Path):
    result = run_load(bench_gateway.url("/echo"), "idle", pki=pki, connections=50,
                      server_pid=os.getpid())
    assert result.idle_connections == 50, result.error_samples
    assert result.requests == 50 and result.error_total == 0, result.error_samples
    assert result.server_rss_kib_before and result.server_rss_kib_after
    assert result.server_kib_per_connection is not None      # a figure, never a bound
    assert "KiB per idle connection" in markdown_table([result])


def test_h2_eval_micro_benchmark_runs():
    """bench/h2_eval.py (the in-process HTTP/2 micro-benchmark) serves every request it sends
    through the real gateway; speed is not asserted."""
    script = Path(__file__).resolve().parents[1] / "bench" / "h2_eval.py"
    result = subprocess.run([sys.executable, str(script), "--batches", "20", "--runs", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "µs per HTTP/2 request (200 requests)" in result.stdout, result.stdout


def test_handshake_eval_micro_benchmark_runs():
    """bench/handshake_eval.py completes real TLS 1.3 mTLS handshakes in memory, with and
    without session tickets; speed is not asserted."""
    script = Path(__file__).resolve().parents[1] / "bench" / "handshake_eval.py"
    for extra in ([], ["--tickets"]):
        result = subprocess.run([sys.executable, str(script), "--handshakes", "5", "--runs",
                                 "1", *extra], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "µs per handshake (ClientHello" in result.stdout, result.stdout


def test_tls_floor_server_answers_the_bench(bench_gateway: RunningGateway, pki: Path):
    """bench/tls_floor.py, on the gateway's own configuration, answers the HTTP/1.1 modes
    of the bench without errors (the figures are its business, not this test's)."""
    port = _closed_port()
    script = Path(__file__).resolve().parents[1] / "bench" / "tls_floor.py"
    floor = subprocess.Popen([sys.executable, str(script), "--config",
                              str(bench_gateway.config_path), "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "floor server on" in floor.stdout.readline()
        for mode in ("handshake", "resume", "h1"):
            result = run_load(f"https://localhost:{port}/", mode, pki=pki, requests=20,
                              warmup=0, connections=2)
            assert result.requests == 20 and result.error_total == 0, result.error_samples
            assert result.statuses == {"200": 20}
    finally:
        floor.terminate()
        floor.wait(10)


@pytest.mark.parametrize("path", ["/thumbprint", "/plain"])
@pytest.mark.parametrize("per_connection", [False, True], ids=["keep-alive", "per-connection"])
def test_h1_eval_micro_benchmark_runs(path: str, per_connection: bool):
    """bench/h1_eval.py gets a 200 for every request it sends through the real gateway
    (it stops at the first other answer), on one connection or a new one each; speed is not
    asserted."""
    script = Path(__file__).resolve().parents[1] / "bench" / "h1_eval.py"
    extra = ["--per-connection"] if per_connection else []
    result = subprocess.run([sys.executable, str(script), "--requests", "50", "--runs", "1",
                             "--path", path, *extra], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    how = "new connection per request" if per_connection else "keep-alive"
    assert f"µs per HTTP/1.1 request on {path}, {how} (50 requests)" in result.stdout, \
        result.stdout
    assert "Task was destroyed" not in result.stderr, result.stderr


# 403 unless the late request brought a certificate: a 200 means the client answered it.
NEEDS_CERTIFICATE = """<policies><inbound><choose>
<when condition="@(context.Request.Certificate == null)"><return-response>
<set-status code="403" /></return-response></when></choose></inbound>
<backend><forward-request /></backend><outbound /><on-error /></policies>"""


@pytest.mark.parametrize("tls_lib, tls_version", [("ssl", "1.2"), ("pyopenssl", "1.2"),
                                                   ("ssl", "1.3")])
def test_keep_alive_clients_answer_a_late_certificate_request(
        start_gateway, tmp_path: Path, pki: Path, tls_lib: str, tls_version: str):
    """On a hostname that asks for the certificate late, each connection of the bench is
    asked on its first request (TLS 1.2: renegotiation; 1.3: post-handshake auth, which the
    ssl client offers): the client answers and goes on. (The ssl client used to leave its
    part of a renegotiation unsent and wait: no request completed, and no error either.)"""
    policy = tmp_path / "needs-certificate.xml"
    policy.write_text(NEEDS_CERTIFICATE)
    gateway = start_gateway(on_demand_config(policy))
    result = run_load(gateway.url("/late"), "h1", pki=pki, tls_version=tls_version,
                      tls_lib=tls_lib, **QUICK)
    assert result.requests > 0 and result.error_total == 0, result.error_samples
    assert result.statuses == {"200": result.requests}
    assert result.tls["version"] == f"TLSv{tls_version}"


def test_a_run_where_nothing_completes_says_so(pki: Path, capsys: pytest.CaptureFixture):
    """Nothing answered within the run, nothing timed out yet: not a silent "0 errors"."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        parser = argparse.ArgumentParser()
        load_cli.add_arguments(parser)
        args = parser.parse_args([
            "--target", f"https://localhost:{silent.getsockname()[1]}/echo", "--mode",
            "handshake", "--pki", str(pki), "--duration", "0.5", "--warmup", "0",
            "--connections", "2", "--no-progress"])
        assert load_cli.main(args) == 1
    assert "no request completed in the measured window and none failed" in \
        capsys.readouterr().err
