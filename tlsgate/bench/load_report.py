"""Reports of ``tlsgate bench``: a Markdown table and a PNG bar chart (matplotlib optional)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tlsgate.bench.load import LoadResult

COLUMNS = ("mode", "conns", "req/s", "MB/s", "p50 ms", "p99 ms", "p99.9 ms", "errors",
           "server µs/req", "server CPU", "generator CPU", "resumed")


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _errors(result: LoadResult) -> str:
    if not result.error_total:
        return "0"
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in result.errors.items() if count)
    return f"{result.error_total:,} ({kinds})"


def _row(result: LoadResult) -> list[str]:
    lat = result.latency_ms
    conns = str(result.connections)
    if result.mode == "h2":
        conns += f"×{result.streams}"
    if result.workers > 1:
        conns += f" ({result.workers} workers)"
    generator = _number(result.generator_cpu_percent) + " %"
    if result.generator_saturated:
        generator += " (saturated)"
    server = (_number(result.server_cpu_percent) + " %"
              if result.server_cpu_percent is not None else "–")
    resumed = (f"{result.resumption_rate * 100:.0f} %"
               if result.resumption_rate is not None else "–")
    return [result.mode, conns, _number(result.requests_per_second),
            _number(result.megabytes_per_second, 1), _number(lat["p50"], 2),
            _number(lat["p99"], 2), _number(lat["p99.9"], 2), _errors(result),
            _number(result.server_cpu_us_per_request), server, generator, resumed]


def stalled_run_note(result: LoadResult, timeout: float) -> str | None:
    """Why a mode shows no figure although it counted no error (None when that is not so)."""
    if result.requests or result.error_total or result.mode == "idle":
        return None
    return ("no request completed in the measured window and none failed: answers are "
            f"slower than the run (they count as timeouts only after --timeout {timeout:g} s)")


def markdown_table(results: list[LoadResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    if results:
        first = results[0]
        libs: dict[str, list[str]] = {}
        for result in results:
            libs.setdefault(result.tls_lib, []).append(result.mode)
        negotiated = next((r.tls for r in results if r.tls), {})
        lines.append("")
        lines.append(
            f"target {first.target}, {first.duration:.1f} s measured after {first.warmup:g} s "
            "warm-up; client TLS "
            + ", ".join(f"{lib} ({', '.join(modes)})" for lib, modes in libs.items())
            + "; negotiated " + " ".join(str(negotiated.get(k)) for k in ("version", "cipher",
                                                                           "group")
                                         if negotiated.get(k)))
    for result in results:
        if result.mode == "idle":
            lines.append(_idle_line(result))
    return "\n".join(lines)


def _idle_line(result: LoadResult) -> str:
    line = (f"idle: {result.idle_connections:,} of {result.connections:,} connections held "
            f"open, errors {_errors(result)}")
    if result.server_kib_per_connection is not None:
        line += (f"; server RSS {result.server_rss_kib_before:,} → "
                 f"{result.server_rss_kib_after:,} KiB: "
                 f"**{result.server_kib_per_connection:,.1f} KiB per idle connection**")
    elif result.server_pid is None:
        line += "; no --server-pid, no RSS"
    if result.server_rss_note:
        line += f" ({result.server_rss_note})"
    return line


def write_chart(results: list[LoadResult], path: Path) -> tuple[bool, str]:
    """Throughput and latency bars, one group per result. (False, why) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False, "matplotlib is not installed (pip install matplotlib)"
    labels = [r.mode + (f" {r.megabytes_per_second:.0f} MB/s" if r.megabytes_per_second
                        else "") for r in results]
    with_server = any(r.server_cpu_us_per_request is not None for r in results)
    panels = 3 if with_server else 2
    fig, axes = plt.subplots(1, panels, figsize=(max(8, (1.6 * len(results) + 2) * panels / 2),
                                                 4.5))
    left, right = axes[0], axes[1]
    rates = [r.requests_per_second for r in results]
    bars = left.bar(labels, rates, color="#4477aa")
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in rates], fontsize=8)
    left.set_ylabel("requests/s")
    left.set_title("throughput")
    width = 0.27
    for offset, (key, color) in enumerate((("p50", "#66ccee"), ("p99", "#ee6677"),
                                           ("p99.9", "#aa3377"))):
        values = [r.latency_ms[key] or 0.0 for r in results]
        right.bar([i + (offset - 1) * width for i in range(len(results))], values, width,
                  label=key, color=color)
    right.set_xticks(range(len(results)), labels)
    right.set_ylabel("ms")
    right.set_title("latency")
    right.legend(fontsize=8)
    if with_server:
        cost = [r.server_cpu_us_per_request or 0.0 for r in results]
        bars = axes[2].bar(labels, cost, color="#228833")
        axes[2].bar_label(bars, labels=[f"{v:,.0f}" for v in cost], fontsize=8)
        axes[2].set_ylabel("µs of server CPU per request")
        axes[2].set_title("server CPU per request")
    for axis in axes:
        axis.tick_params(axis="x", labelsize=8, rotation=15)
    first = results[0] if results else None
    if first is not None:
        fig.suptitle(f"tlsgate bench — {first.target}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True, ""
