"""The deadlock matrix's report: Markdown tables, ``deadlock.md``, ``deadlock.csv`` and
``deadlock.png`` (a heat map; needs matplotlib, the ``bench`` extra).

Tables have one row per mode × TLS × HTTP × client and one column per body size. POST and PUT
share one table when every cell has the same outcome for both (the durations shown are
POST's); otherwise each method gets its own table. Markdown leaves out the rows that are
``n/a`` throughout (http.client and s_client over HTTP/2); the CSV and the PNG keep them.
"""

from __future__ import annotations

import csv
import platform
import shutil
import ssl
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from tlsgate.bench.deadlock import OUTCOMES, RETRY_PREFIX, Report, Result, size_label

LEGEND = f"""\
- `ok`: 200; the echo backend saw the client certificate (thumbprint checked) and the whole
  body (SHA-256 checked).
- `freeze→403 N s`: 403 after N seconds, about `on_demand_timeout`: the deadlock.
- `null`: 403 at once: the certificate could not be asked for (TLS 1.3 client without
  post-handshake auth).
- `413`: the body is larger than `on_demand_buffer_limit` (`buffer` mode).
- `{RETRY_PREFIX}X`: HTTP/2 stream reset with HTTP_1_1_REQUIRED; curl retried over HTTP/1.1
  and the retry ended as X.
- `tls_error`: the initial handshake failed. `error: ...`: anything else (client's words).
- `n/a`: the client cannot do it (http.client and s_client speak no HTTP/2).

Clients: `curl` = curl with `-H 'Expect:'` (body in flight at once); `curl-expect` = curl
with `Expect: 100-continue`; `pyhttp-pha` / `pyhttp-nopha` = Python http.client with
`post_handshake_auth` on / off; `s_client` = `openssl s_client -enable_pha` fed a raw HTTP/1.1
request. Modes `stall`, `buffer`, `spool` are `on_demand_body` on a hostname with
`negotiate_client_certificate = false`; `handshake` asks in the TLS handshake.
"""

#: Heat map colour of each outcome.
COLOURS = {"ok": "#2e7d32", "freeze→403": "#c62828", "null": "#ef6c00", "413": "#6a1b9a",
           "tls_error": "#263238", "error": "#78909c", "n/a": "#eeeeee"}
_SHORT = {"ok": "ok", "freeze→403": "403", "null": "null", "413": "413", "tls_error": "tls",
          "error": "err", "n/a": ""}


# -- tables --------------------------------------------------------------------------------

def _rows(results: Iterable[Result]) -> dict[tuple, dict[int, Result]]:
    rows: dict[tuple, dict[int, Result]] = {}
    for result in results:
        rows.setdefault(result.cell.row, {})[result.cell.size] = result
    return rows


def _by_method(report: Report) -> dict[str, list[Result]]:
    methods: dict[str, list[Result]] = {}
    for result in report.results:
        methods.setdefault(result.cell.method, []).append(result)
    return methods


def methods_identical(report: Report) -> bool:
    """Whether every cell has the same outcome (retry included) for every method."""
    kinds = [[result.kind for result in results] for results in _by_method(report).values()]
    return all(k == kinds[0] for k in kinds)


def markdown_table(results: list[Result], sizes: Iterable[int]) -> str:
    sizes = list(sizes)
    lines = ["| mode | TLS | HTTP | client | " + " | ".join(map(size_label, sizes)) + " |",
             "|---|---|---|---|" + "---|" * len(sizes)]
    for (mode, tls, http, client), cells in _rows(results).items():
        if all(cell.outcome == "n/a" for cell in cells.values()):
            continue
        labels = [cells[size].label.replace("|", "\\|") for size in sizes]
        lines.append(f"| {mode} | {tls} | {http} | {client} | " + " | ".join(labels) + " |")
    return "\n".join(lines)


def tables(report: Report) -> str:
    """The Markdown tables, POST and PUT merged when identical."""
    by_method = _by_method(report)
    sizes = report.options.sizes
    if len(by_method) > 1 and methods_identical(report):
        first = next(iter(by_method))
        title = (f"### {' and '.join(by_method)} (identical outcomes; durations are "
                 f"{first}'s)")
        return f"{title}\n\n{markdown_table(by_method[first], sizes)}\n"
    return "\n".join(f"### {method}\n\n{markdown_table(results, sizes)}\n"
                     for method, results in by_method.items())


def counts(report: Report) -> str:
    tally: dict[str, int] = {}
    for result in report.results:
        tally[result.kind] = tally.get(result.kind, 0) + 1
    return ", ".join(f"{kind} {count}" for kind, count in sorted(tally.items()))


def summary(report: Report) -> str:
    options = report.options
    runnable = sum(result.outcome != "n/a" for result in report.results)
    return (f"{runnable} requests ({len(report.results)} cells) in {report.seconds:.0f} s, "
            f"{options.jobs} at a time, on_demand_timeout = {options.timeout:g} s. "
            f"Outcomes: {counts(report)}.")


def stdout_text(report: Report) -> str:
    return f"{tables(report)}\n{summary(report)}"


def markdown_document(report: Report) -> str:
    env = "\n".join(f"- {name}: {value}" for name, value in report.environment.items())
    anomalies = _anomalies(report)
    return (
        "# tlsgate deadlock matrix\n\n"
        f"{summary(report)}\n\n"
        f"Every `ok` cell saw the client certificate with thumbprint `{report.thumbprint}`.\n\n"
        f"{LEGEND}\n{tables(report)}\n"
        + (f"## Cells ending in an error\n\n{anomalies}\n\n" if anomalies else "")
        + _gateway_problems(report)
        + f"## Environment\n\n{env}\n"
    )


def _gateway_problems(report: Report) -> str:
    if not report.gateway_problems:
        return ""
    shown = "\n".join(report.gateway_problems[:50])
    more = len(report.gateway_problems) - 50
    return (f"## Gateway log: errors\n\n```\n{shown}\n```\n"
            + (f"\n({more} more; run with --workdir to keep gateway.log)\n" if more > 0 else "")
            + "\n")


def _anomalies(report: Report) -> str:
    return "\n".join(f"- {r.cell.name}: {r.detail or r.outcome} ({r.seconds:.1f} s)"
                     for r in report.results if r.outcome in ("error", "tls_error"))


# -- files ---------------------------------------------------------------------------------

CSV_FIELDS = ("method", "size", "mode", "tls", "http", "client", "outcome", "label", "seconds",
              "status", "http11_retry", "http_version", "certificate_origin", "thumbprint",
              "detail")


def write_csv(report: Report, path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_FIELDS)
        for r in report.results:
            c = r.cell
            writer.writerow([c.method, c.size, c.mode, c.tls, c.http, c.client, r.outcome,
                             r.label, f"{r.seconds:.3f}", r.status or "", int(r.http11_retry),
                             r.http_version, r.certificate_origin, r.thumbprint, r.detail])


def write_png(report: Report, path: Path) -> str:
    """The heat map; returns a message for the user."""
    try:
        import matplotlib
    except ImportError:
        return ("deadlock.png skipped: matplotlib is not installed "
                "(pip install 'tlsgate[bench]')")
    matplotlib.use("Agg")
    from tlsgate.bench.deadlock_heatmap import draw

    draw(report, path, COLOURS, _SHORT)
    return f"wrote {path}"


def write_outputs(report: Report, out: Path) -> list[str]:
    """deadlock.md, deadlock.csv, deadlock.png in ``out``; lines to tell the user."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "deadlock.md").write_text(markdown_document(report))
    write_csv(report, out / "deadlock.csv")
    return [f"wrote {out / 'deadlock.md'}", f"wrote {out / 'deadlock.csv'}",
            write_png(report, out / "deadlock.png")]


# -- environment ---------------------------------------------------------------------------

def _first_line(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    try:
        output = subprocess.run(command, capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return output.decode(errors="replace").splitlines()[0] if output else "unknown"


def environment() -> dict[str, str]:
    from OpenSSL import SSL
    from OpenSSL import __version__ as pyopenssl_version

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "gateway TLS": f"pyOpenSSL {pyopenssl_version}, "
                       f"{SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}",
        "curl": _first_line(["curl", "--version"]),
        "openssl s_client": _first_line(["openssl", "version"]),
        "Python http.client": f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}",
    }


__all__ = ["OUTCOMES", "markdown_document", "stdout_text", "tables", "write_outputs"]
