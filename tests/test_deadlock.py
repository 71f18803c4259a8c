"""``tlsgate deadlock`` (SPEC §7): the quick matrix end to end with real clients, and the
pieces that turn what a client saw into a cell.

One ``--quick`` run (16 KiB and 64 KiB POSTs, curl and Python http.client, every mode, TLS 1.2
and 1.3, HTTP/1.1 and HTTP/2, ``on_demand_timeout = 2``) is shared by the module; each test
checks a part of its CSV.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tlsgate.bench.deadlock import (
    Cell,
    classify,
    parse_size,
    resolve_options,
    size_label,
)
from tlsgate.bench.deadlock_clients import Exchange

KIB = 1024
TIMEOUT = 2.0        # --quick's on_demand_timeout
ON_DEMAND = ("stall", "buffer", "spool")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """(out dir, completed process, {(mode, tls, http, client, size): CSV row})."""
    out = tmp_path_factory.mktemp("deadlock")
    result = subprocess.run(
        [sys.executable, "-m", "tlsgate", "deadlock", "--quick", "--out", str(out)],
        capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    with (out / "deadlock.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    cells = {(r["mode"], r["tls"], r["http"], r["client"], int(r["size"])): r for r in rows}
    return out, result, cells


def _cell(quick, mode, tls, http, client, size):
    return quick[2][(mode, tls, http, client, size)]


def _describe(row) -> str:
    return f"{row['label']} ({row['seconds']} s, detail: {row['detail']!r})"


# -- the quick run -------------------------------------------------------------------------

def test_quick_run_writes_its_reports(quick):
    out, result, cells = quick
    assert len(cells) == 2 * 4 * 2 * 2 * 3        # sizes × modes × TLS × HTTP × clients
    document = (out / "deadlock.md").read_text()
    assert "| mode | TLS | HTTP | client | 16K | 64K |" in document
    assert "| mode | TLS | HTTP | client | 16K | 64K |" in result.stdout.decode()
    assert {row["method"] for row in cells.values()} == {"POST"}
    # The progress line: "\r[n/64] stall tls1.2 h1 curl POST 64K → ..."
    assert re.search(r"\r\[\d+/64\] \w+ tls1\.[23] h[12] \S+ POST \d+K → ",
                     result.stderr.decode())
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "deadlock.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not (out / "deadlock.png").exists()
        assert b"matplotlib is not installed" in result.stderr


def test_http_clients_cannot_do_http2(quick):
    for mode in ("stall", "handshake"):
        for client in ("pyhttp-pha", "pyhttp-nopha"):
            assert _cell(quick, mode, "1.3", "2", client, 16 * KIB)["outcome"] == "n/a"


def test_ok_cells_saw_the_client_certificate(quick):
    out, _, cells = quick
    thumbprint = re.search(r"thumbprint `([0-9A-F]{40})`",
                           (out / "deadlock.md").read_text()).group(1)
    ok = [row for row in cells.values() if row["outcome"] == "ok"]
    assert len(ok) > 20
    assert {row["thumbprint"] for row in ok} == {thumbprint}
    assert {row["status"] for row in ok} == {"200"}


def test_stall_serves_a_body_below_upload_read_ahead(quick):
    for tls in ("1.2", "1.3"):
        for client in ("curl", "pyhttp-pha"):
            row = _cell(quick, "stall", tls, "1.1", client, 16 * KIB)
            assert row["outcome"] == "ok", _describe(row)
            assert row["certificate_origin"] == ("renegotiation" if tls == "1.2"
                                                 else "post_handshake")
    assert _cell(quick, "stall", "1.2", "1.1", "pyhttp-nopha", 16 * KIB)["outcome"] == "ok"


def test_stall_freezes_past_upload_read_ahead(quick):
    """64 KiB with the body in flight (curl, no Expect) on TLS 1.2: the deadlock, then the
    policy's 403 once on_demand_timeout gives up."""
    row = _cell(quick, "stall", "1.2", "1.1", "curl", 64 * KIB)
    assert row["outcome"] == "freeze→403", _describe(row)
    assert TIMEOUT * 0.9 <= float(row["seconds"]) < TIMEOUT + 5
    assert row["label"].startswith("freeze→403 ") and row["label"].endswith("s")


def test_spool_serves_every_client_that_can_answer(quick):
    for (mode, tls, http, client, size), row in quick[2].items():
        if mode != "spool" or row["outcome"] == "n/a":
            continue
        if client == "pyhttp-nopha" and tls == "1.3":
            continue            # cannot be asked: null (test below)
        assert row["outcome"] == "ok", (client, tls, http, size, _describe(row))


def test_handshake_mode_is_always_ok(quick):
    for (mode, _tls, http, _client, _size), row in quick[2].items():
        if mode != "handshake" or row["outcome"] == "n/a":
            continue
        assert row["label"] == "ok", _describe(row)
        assert row["certificate_origin"] == "handshake"
        assert row["http_version"] == http           # HTTP/2 served as HTTP/2, no retry


def test_tls13_http_client_without_post_handshake_auth_gets_null(quick):
    for mode in ON_DEMAND:
        for size in (16 * KIB, 64 * KIB):
            row = _cell(quick, mode, "1.3", "1.1", "pyhttp-nopha", size)
            assert row["outcome"] == "null", (mode, size, _describe(row))
            assert row["status"] == "403" and float(row["seconds"]) < TIMEOUT * 0.8


def test_http2_curl_gets_http_1_1_required_then_its_retry_is_ok(quick):
    for mode in ON_DEMAND:
        for tls in ("1.2", "1.3"):
            row = _cell(quick, mode, tls, "2", "curl", 16 * KIB)
            assert row["label"] == "http_1_1_required→ok", (mode, tls, _describe(row))
            assert row["outcome"] == "ok" and row["http11_retry"] == "1"
            assert row["http_version"] == "1.1"      # the retry is what the echo answered


# -- pieces --------------------------------------------------------------------------------

def _exchange(status, seconds, **kwargs) -> Exchange:
    return Exchange(status=status, seconds=seconds, **kwargs)


CELL = Cell("stall", "1.2", "1.1", "curl", "POST", 64 * KIB)


def test_a_slow_403_is_a_freeze_and_a_quick_one_is_null():
    freeze = classify(CELL, _exchange(403, 5.02), thumbprint="AB", body_sha256="x", timeout=5)
    assert (freeze.outcome, freeze.label) == ("freeze→403", "freeze→403 5.0s")
    null = classify(CELL, _exchange(403, 0.05), thumbprint="AB", body_sha256="x", timeout=5)
    assert (null.outcome, null.label) == ("null", "null")


def test_a_200_counts_only_with_the_certificate_and_the_whole_body():
    def echo(thumbprint, digest):
        return json.dumps({"client_certificate": {"thumbprint": thumbprint},
                           "body_sha256": digest, "body_bytes": 3, "http_version": "1.1",
                           "certificate_origin": "renegotiation"}).encode()
    ok = classify(CELL, _exchange(200, 0.1, body=echo("AB", "x")), thumbprint="AB",
                  body_sha256="x", timeout=5)
    assert (ok.outcome, ok.certificate_origin) == ("ok", "renegotiation")
    other = classify(CELL, _exchange(200, 0.1, body=echo("CD", "x")), thumbprint="AB",
                     body_sha256="x", timeout=5)
    assert other.outcome == "error" and "CD" in other.label
    short = classify(CELL, _exchange(200, 0.1, body=echo("AB", "y")), thumbprint="AB",
                     body_sha256="x", timeout=5)
    assert short.outcome == "error" and "body mismatch" in short.label


def test_retry_and_failures_are_labelled():
    retried = classify(CELL, _exchange(413, 0.1, http11_retry=True), thumbprint="AB",
                       body_sha256="x", timeout=5)
    assert retried.label == "http_1_1_required→413"
    tls = classify(CELL, Exchange(tls_error=True, error="alert"), thumbprint="AB",
                   body_sha256="x", timeout=5)
    assert tls.label == "tls_error"
    reset = classify(CELL, Exchange(error="curl: (56) Recv failure: Connection reset by peer",
                                    seconds=5.1), thumbprint="AB", body_sha256="x", timeout=5)
    assert reset.outcome == "error"
    assert reset.label == "freeze→error 5.1s: curl 56 Connection reset by peer"
    quick = classify(CELL, Exchange(error="curl: (55) SSL_write() error: error:0A0000F5:SSL "
                                          "routines::unexpected record", seconds=0.2),
                     thumbprint="AB", body_sha256="x", timeout=5)
    assert quick.label == "error: curl 55 unexpected record"


def test_sizes_parse_and_print():
    assert [parse_size(s) for s in ("0", "16K", "48KiB", "49153", "1M", "10MB")] == \
        [0, 16384, 49152, 49153, 1 << 20, 10 << 20]
    assert [size_label(n) for n in (0, 16384, 49153, 10 << 20)] == ["0", "16K", "49153", "10M"]
    with pytest.raises(ValueError):
        parse_size("lots")


def test_quick_presets_yield_to_explicit_flags():
    options = resolve_options(quick=True, clients="curl,s_client", http="h1", timeout=3)
    assert options.sizes == (16 * KIB, 64 * KIB) and options.methods == ("POST",)
    assert options.clients == ("curl", "s_client") and options.http == ("1.1",)
    assert options.timeout == 3
    assert resolve_options().timeout == 5 and len(resolve_options().sizes) == 7
    with pytest.raises(ValueError, match="--modes: fast"):
        resolve_options(modes="stall,fast")


def test_bad_flags_exit_2(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "tlsgate", "deadlock", "--tls", "1.1",
                             "--out", str(tmp_path)], capture_output=True, timeout=30)
    assert result.returncode == 2
    assert b"--tls: 1.1" in result.stderr
    assert not (tmp_path / "deadlock.md").exists()
