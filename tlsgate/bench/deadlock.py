"""``tlsgate deadlock``: the on-demand client certificate deadlock, cell by cell (SPEC §3, §7).

A hostname with ``negotiate_client_certificate = false`` asks for the client certificate only
when a policy first reads ``context.Request.Certificate``: TLS 1.2 renegotiation or TLS 1.3
post-handshake authentication. If the request body is still arriving, the client answers that
handshake only after the body bytes it has already sent, so a gateway that stops reading the
body (HTTP.sys / API Management, ``on_demand_body = "stall"``) freezes until it gives up.
This command measures what really happens, with real clients, across the matrix

    body size (0, 16K, 48K = upload_read_ahead, 49153 = one byte more, 64K, 1M, 10M)
  × method (POST, PUT)
  × mode: on_demand_body stall | buffer | spool, or handshake (negotiate_client_certificate)
  × TLS 1.2 (renegotiation) | TLS 1.3 (post-handshake auth)
  × HTTP/1.1 | HTTP/2 (no late certificate allowed: HTTP_1_1_REQUIRED)
  × client: curl with the body in flight (``Expect:``), curl with ``Expect: 100-continue``,
    Python http.client with and without post_handshake_auth, openssl s_client (raw HTTP/1.1)

against one gateway subprocess (:mod:`tlsgate.bench.deadlock_lab`) whose API runs the seed's
thumbprint policy, with a short ``on_demand_timeout`` (``--timeout``, 5 s). Each cell is one
request by one client (:mod:`tlsgate.bench.deadlock_clients`) and ends as one outcome:

- ``ok`` — 200 from the echo backend, which saw the client's certificate (thumbprint checked)
  and the whole body (SHA-256 checked);
- ``freeze→403`` — 403 after waiting about ``on_demand_timeout``: the deadlock;
- ``null`` — 403 at once: no certificate could be asked for (TLS 1.3 client without PHA);
- ``413`` — the body is larger than ``buffer`` mode may hold;
- ``http_1_1_required→X`` — curl got the HTTP/2 stream reset, retried over HTTP/1.1, and the
  retry ended as X;
- ``tls_error`` — the initial handshake failed; ``error: ...`` — anything else;
- ``n/a`` — the client cannot do that cell (http.client and s_client speak no HTTP/2).

Cells run concurrently (``--jobs``, 8); the longest ones (expected freezes, big bodies) start
first. The report (:mod:`tlsgate.bench.deadlock_report`) goes to stdout as Markdown tables and
to ``--out`` as ``deadlock.md``, ``deadlock.csv`` and ``deadlock.png``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

from tlsgate.bench.deadlock_clients import (
    CLIENTS,
    Exchange,
    Target,
    available_clients,
    run_client,
    supports,
)
from tlsgate.bench.deadlock_lab import Lab, hostname

KIB, MIB = 1024, 1024 * 1024
SIZES = (0, 16 * KIB, 48 * KIB, 48 * KIB + 1, 64 * KIB, MIB, 10 * MIB)
MODES = ("stall", "buffer", "spool", "handshake")
TLS_VERSIONS = ("1.2", "1.3")
HTTP_VERSIONS = ("1.1", "2")
METHODS = ("POST", "PUT")
OUTCOMES = ("ok", "freeze→403", "null", "413", "tls_error", "error", "n/a")
RETRY_PREFIX = "http_1_1_required→"

#: ``--quick``: what the test suite runs (well under a minute).
QUICK = {"sizes": (16 * KIB, 64 * KIB), "methods": ("POST",),
         "clients": ("curl", "pyhttp-pha", "pyhttp-nopha"), "timeout": 2.0}

#: A 403 that took at least this fraction of on_demand_timeout is a freeze, not a quick null.
FREEZE_FRACTION = 0.8
UPLOAD_RATE = 20 * MIB          # bytes/s assumed when ordering cells longest first


# -- the matrix ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    mode: str
    tls: str
    http: str
    client: str
    method: str
    size: int

    @property
    def name(self) -> str:
        return (f"{self.mode} tls{self.tls} {'h2' if self.http == '2' else 'h1'} "
                f"{self.client} {self.method} {size_label(self.size)}")

    @property
    def row(self) -> tuple[str, str, str, str]:
        return (self.mode, self.tls, self.http, self.client)


@dataclass
class Result:
    cell: Cell
    outcome: str
    seconds: float = 0.0
    status: int | None = None
    http11_retry: bool = False
    thumbprint: str = ""            # the certificate the echo backend saw
    certificate_origin: str = ""
    http_version: str = ""          # of the request that the echo backend answered
    detail: str = ""
    froze: bool = False             # it lasted about on_demand_timeout or longer

    @property
    def label(self) -> str:
        """The cell's text: outcome, freeze duration, retry prefix, short error detail.
        An error after a freeze reads ``freeze→error 5.1s: curl 55 unexpected record``."""
        text = self.outcome
        if self.outcome == "freeze→403":
            text += f" {self.seconds:.1f}s"
        elif self.outcome == "error":
            text = f"freeze→error {self.seconds:.1f}s" if self.froze else "error"
            text += f": {short_error(self.detail)}"
        return RETRY_PREFIX + text if self.http11_retry else text

    @property
    def kind(self) -> str:
        """The outcome with the retry marker but no duration: what POST and PUT compare."""
        return RETRY_PREFIX + self.outcome if self.http11_retry else self.outcome


def short_error(detail: str, width: int = 48) -> str:
    """'curl: (55) SSL_write() error: error:0A0000F5:SSL routines::unexpected record' →
    'curl 55 unexpected record': enough for a table cell (the CSV keeps the whole text)."""
    match = re.match(r"curl: \((\d+)\) (.*)", detail)
    if match:
        code, message = match.groups()
        detail = f"curl {code} {message.rsplit('::', 1)[-1].rsplit(': ', 1)[-1]}"
    detail = re.sub(r"\s*\(_ssl\.c:\d+\)", "", detail)
    return detail if len(detail) <= width else detail[:width - 1] + "…"


def size_label(size: int) -> str:
    if size and size % MIB == 0:
        return f"{size // MIB}M"
    if size and size % KIB == 0:
        return f"{size // KIB}K"
    return str(size)


def parse_size(text: str) -> int:
    """'16K' / '16KB' / '16KiB' → 16384, '1M' → 1048576, '49153' → 49153."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = {"K": KIB, "M": MIB}.get(raw[-1:], 1)
    number = raw[:-1] if factor != 1 else raw
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (examples: 0, 16K, 49153, 1M)")
    return int(number) * factor


def build_matrix(options: Options) -> list[Cell]:
    return [Cell(mode, tls, http, client, method, size)
            for method in options.methods for mode in options.modes
            for tls in options.tls for http in options.http for client in options.clients
            for size in options.sizes]


def estimated_seconds(cell: Cell, timeout: float) -> float:
    """A rough cost, to start the long cells first."""
    freeze = (cell.mode == "stall" and cell.size > 48 * KIB and cell.client != "curl-expect")
    attempts = 2 if cell.http == "2" and cell.mode != "handshake" else 1
    return attempts * ((timeout if freeze else 0) + cell.size / UPLOAD_RATE)


# -- options -------------------------------------------------------------------------------

@dataclass
class Options:
    sizes: tuple[int, ...] = SIZES
    modes: tuple[str, ...] = MODES
    tls: tuple[str, ...] = TLS_VERSIONS
    http: tuple[str, ...] = HTTP_VERSIONS
    clients: tuple[str, ...] = CLIENTS
    methods: tuple[str, ...] = METHODS
    timeout: float = 5.0
    out: Path = Path("bench/deadlock")
    jobs: int = 8
    workdir: Path | None = None     # keep PKI, bodies and gateway.log there
    quick: bool = False
    progress: bool = True

    @property
    def client_timeout(self) -> float:
        """How long a client waits: two freezes (h2 attempt + retry) and a 10 MB upload."""
        return 2 * self.timeout + 40


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _choose(name: str, given: list[str] | None, allowed: tuple[str, ...],
            default: tuple[str, ...]) -> tuple[str, ...]:
    if given is None:
        return default
    wrong = [value for value in given if value not in allowed]
    if wrong or not given:
        raise ValueError(f"--{name}: {', '.join(wrong) or 'nothing chosen'} "
                         f"(choose from {', '.join(allowed)})")
    return tuple(dict.fromkeys(given))


def _http_versions(given: list[str] | None) -> list[str] | None:
    """'1.1' / 'h1' / 'http/1.1' → '1.1'; '2' / 'h2' → '2'."""
    if given is None:
        return None
    aliases = {"h1": "1.1", "1": "1.1", "http/1.1": "1.1", "h2": "2", "http/2": "2"}
    return [aliases.get(value.lower(), value) for value in given]


def resolve_options(*, quick: bool = False, sizes: str | None = None, modes: str | None = None,
                    tls: str | None = None, http: str | None = None, clients: str | None = None,
                    methods: str | None = None, timeout: float | None = None,
                    out: Path | None = None, jobs: int = 8, workdir: Path | None = None,
                    progress: bool = True) -> Options:
    """Options from command-line strings; ``--quick`` presets, explicit flags win.
    Raises ValueError with a message for the user."""
    base = Options(**QUICK) if quick else Options()
    size_values = _split(sizes)
    if size_values is not None and not size_values:
        raise ValueError("--sizes: nothing chosen")
    method_values = _split(methods)
    if jobs < 1:
        raise ValueError("--jobs must be at least 1")
    if timeout is not None and timeout <= 0:
        raise ValueError("--timeout must be positive")
    return replace(
        base,
        sizes=tuple(dict.fromkeys(map(parse_size, size_values))) if size_values else base.sizes,
        modes=_choose("modes", _split(modes), MODES, base.modes),
        tls=_choose("tls", _split(tls), TLS_VERSIONS, base.tls),
        http=_choose("http", _http_versions(_split(http)), HTTP_VERSIONS, base.http),
        clients=_choose("clients", _split(clients), CLIENTS, base.clients),
        methods=_choose("methods", method_values and [m.upper() for m in method_values],
                        METHODS, base.methods),
        timeout=timeout if timeout is not None else base.timeout,
        out=out if out is not None else base.out,
        jobs=jobs, workdir=workdir, quick=quick, progress=progress)


# -- running -------------------------------------------------------------------------------

@dataclass
class Report:
    options: Options
    results: list[Result]
    seconds: float
    thumbprint: str
    environment: dict[str, str] = field(default_factory=dict)
    gateway_problems: list[str] = field(default_factory=list)   # from its log


def classify(cell: Cell, exchange: Exchange, *, thumbprint: str, body_sha256: str,
             timeout: float) -> Result:
    """Turn what a client saw into one of :data:`OUTCOMES`."""
    result = Result(cell, "error", exchange.seconds, exchange.status, exchange.http11_retry,
                    detail=exchange.error,
                    froze=exchange.seconds >= FREEZE_FRACTION * timeout)
    if exchange.tls_error:
        result.outcome = "tls_error"
    elif exchange.status == 200:
        _check_echo(result, exchange.body, thumbprint, body_sha256, cell.size)
    elif exchange.status == 403:
        result.outcome = "freeze→403" if result.froze else "null"
    elif exchange.status == 413:
        result.outcome = "413"
    elif exchange.status is not None:
        result.detail = f"HTTP {exchange.status}" + (f"; {exchange.error}" if exchange.error
                                                     else "")
    elif not result.detail:
        result.detail = "no response"
    return result


def _check_echo(result: Result, body: bytes, thumbprint: str, body_sha256: str,
                size: int) -> None:
    try:
        echo = json.loads(body)
    except ValueError:
        result.detail = "200 without the echo's JSON"
        return
    seen = (echo.get("client_certificate") or {}).get("thumbprint") or ""
    result.thumbprint = seen
    result.certificate_origin = echo.get("certificate_origin") or ""
    result.http_version = str(echo.get("http_version") or "")
    if seen != thumbprint:
        result.detail = f"200 with certificate {seen or 'none'}"
    elif echo.get("body_sha256") != body_sha256:
        result.detail = f"body mismatch: {echo.get('body_bytes')} of {size} bytes"
    else:
        result.outcome = "ok"           # detail keeps a client's remark, if any


class Progress:
    """``\\r[12/96] stall tls1.2 h1 curl POST 1M → freeze→403 5.0s`` on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self._width = 0
        self._lock = threading.Lock()

    def update(self, result: Result) -> None:
        with self._lock:
            self.done += 1
            if not self.enabled:
                return
            line = f"[{self.done}/{self.total}] {result.cell.name} → {result.label}"[:150]
            sys.stderr.write("\r" + line.ljust(self._width))
            sys.stderr.flush()
            self._width = len(line)

    def finish(self) -> None:
        if self.enabled and self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _not_applicable(cell: Cell, why: str) -> Result:
    return Result(cell, "n/a", detail=why)


def _run_cell(cell: Cell, lab: Lab, options: Options) -> Result:
    body = lab.bodies[cell.size]
    target = Target(host=hostname(cell.mode), port=lab.port, pki=lab.pki, body=body.path,
                    size=cell.size, method=cell.method, tls=cell.tls, http=cell.http,
                    timeout=options.client_timeout)
    exchange = run_client(cell.client, target)
    return classify(cell, exchange, thumbprint=lab.thumbprint, body_sha256=body.sha256,
                    timeout=options.timeout)


def run_cells(cells: list[Cell], lab: Lab, options: Options) -> list[Result]:
    """Every cell, ``options.jobs`` at a time, longest first; results in matrix order."""
    missing = available_clients()
    results: dict[Cell, Result] = {}
    runnable = []
    for cell in cells:
        if not supports(cell.client, cell.http):
            results[cell] = _not_applicable(cell, f"{cell.client} does not speak HTTP/2")
        elif missing.get(cell.client):
            results[cell] = _not_applicable(cell, missing[cell.client])
        else:
            runnable.append(cell)
    runnable.sort(key=lambda cell: estimated_seconds(cell, options.timeout), reverse=True)
    progress = Progress(len(runnable), options.progress)
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        futures = {pool.submit(_run_cell, cell, lab, options): cell for cell in runnable}
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            progress.update(result)
    progress.finish()
    return [results[cell] for cell in cells]


def run_matrix(options: Options) -> Report:
    """Set up the lab, run the matrix, tear the lab down."""
    from tlsgate.bench.deadlock_report import environment

    started = time.monotonic()
    cells = build_matrix(options)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tlsgate-deadlock-"))
    try:
        with Lab(workdir, modes=list(options.modes), sizes=list(options.sizes),
                 timeout=options.timeout) as lab:
            results = run_cells(cells, lab, options)
            problems = lab.problems()
            thumbprint = lab.thumbprint
    finally:
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return Report(options, results, time.monotonic() - started, thumbprint, environment(),
                  problems)


def main(options: Options) -> int:
    """Run, print the Markdown tables, write the files; the exit status of the command."""
    from tlsgate.bench.deadlock_report import stdout_text, write_outputs

    for warning in _warnings(options):
        print(f"tlsgate deadlock: {warning}", file=sys.stderr)
    try:
        report = run_matrix(options)
    except RuntimeError as exc:   # the gateway did not start
        print(f"tlsgate deadlock: {exc}", file=sys.stderr)
        return 1
    print(stdout_text(report))
    if report.gateway_problems:
        print(f"tlsgate deadlock: the gateway logged {len(report.gateway_problems)} error(s), "
              "listed in deadlock.md", file=sys.stderr)
    for line in write_outputs(report, options.out):
        print(line, file=sys.stderr)
    return 0


def _warnings(options: Options) -> list[str]:
    missing = available_clients()
    return [f"{client}: {missing[client]}; its cells are n/a"
            for client in options.clients if missing.get(client)]
