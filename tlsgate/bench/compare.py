"""tlsgate side by side with its peers: ``tlsgate bench --peers nginx,haproxy --mode h1``.

    comparison = compare(["nginx", "hypercorn"], ["handshake", "h1"], pki=Path(...), rounds=3,
                         duration=5)
    print(markdown(comparison)); json.dumps(comparison.to_dict())

The servers (tlsgate too, unless an already running one is given) are started once on loopback,
pinned to core 0 (:mod:`tlsgate.bench.peers`); the generator runs in this process, pinned to the
other cores while the comparison runs. For each mode the runs are interleaved — tlsgate, peer 1,
peer 2, …, tlsgate, peer 1, … — ``rounds`` times (at least 3), so a slow stretch of a noisy
machine hits every server alike; each figure is the median of the rounds, with min–max.

Ratios are tlsgate / peer of the medians: requests/s (> 1: tlsgate faster; valid only when the
server, not the generator, was the limit) and server CPU µs per request (< 1: tlsgate cheaper).
``peer µs ÷ tlsgate µs`` is the requests/s ratio the two would reach with one full core each,
which is what the issue's targets ("per server core") mean; it stays meaningful when the
generator cannot saturate a C server.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tlsgate.bench import peers as peer_mod

MIN_ROUNDS = 3
#: The issue's targets: (mode, peer) -> minimum tlsgate/peer ratio per server core.
TARGETS: dict[tuple[str, str], float] = {
    ("handshake", "nginx"): 1.5, ("h1", "nginx"): 0.25, ("h1", "hypercorn"): 2.0,
    ("h2", "nginx"): 0.10, ("h2", "hypercorn"): 2.0, ("upload", "nginx"): 0.5,
}


@dataclass
class Cell:
    """Every round of one mode against one server."""

    server: str
    mode: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None

    def _values(self, key: str) -> list[float]:
        return [r[key] for r in self.runs if r.get(key) is not None]

    def stat(self, key: str) -> tuple[float, float, float] | None:
        values = self._values(key)
        if not values:
            return None
        return statistics.median(values), min(values), max(values)

    @property
    def errors(self) -> int:
        return sum(r.get("error_total", 0) for r in self.runs)

    @property
    def saturated_generator(self) -> bool:
        return any(r.get("generator_saturated") for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        summary = {}
        for key in ("requests_per_second", "megabytes_per_second", "server_cpu_us_per_request",
                    "generator_cpu_us_per_request", "server_cpu_percent",
                    "generator_cpu_percent"):
            stat = self.stat(key)
            summary[key] = None if stat is None else dict(zip(("median", "min", "max"), stat,
                                                              strict=True))
        p99 = self.stat_latency("p99")
        summary["latency_p99_ms"] = None if p99 is None else dict(
            zip(("median", "min", "max"), p99, strict=True))
        return {"server": self.server, "mode": self.mode, "skipped": self.skipped,
                "errors": self.errors, "generator_saturated": self.saturated_generator,
                "summary": summary, "runs": self.runs}

    def stat_latency(self, key: str) -> tuple[float, float, float] | None:
        values = [r["latency_ms"][key] for r in self.runs
                  if r.get("latency_ms", {}).get(key) is not None]
        if not values:
            return None
        return statistics.median(values), min(values), max(values)


@dataclass
class Comparison:
    servers: list[str]
    modes: list[str]
    rounds: int
    settings: dict[str, Any]
    versions: dict[str, str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    started: str = ""
    environment: dict[str, Any] = field(default_factory=dict)

    def cell(self, server: str, mode: str) -> Cell:
        return self.cells.setdefault((server, mode), Cell(server, mode))

    def ratios(self) -> list[dict[str, Any]]:
        """tlsgate/peer per (mode, peer): requests/s, server µs/request, and by CPU."""
        rows = []
        for mode in self.modes:
            ours = self.cells.get(("tlsgate", mode))
            for server in self.servers:
                if server == "tlsgate":
                    continue
                theirs = self.cells.get((server, mode))
                if ours is None or theirs is None or theirs.skipped or ours.skipped:
                    continue
                rate = _ratio(ours.stat("requests_per_second"),
                              theirs.stat("requests_per_second"))
                cpu = _ratio(ours.stat("server_cpu_us_per_request"),
                             theirs.stat("server_cpu_us_per_request"))
                target = TARGETS.get((mode, server))
                by_cpu = None if not cpu else 1 / cpu
                rows.append({"mode": mode, "peer": server, "requests_per_second": rate,
                             "server_cpu_us_per_request": cpu, "per_core": by_cpu,
                             "target": target,
                             "met": None if target is None or by_cpu is None
                             else by_cpu >= target,
                             "met_by_requests_per_second": None if target is None or rate is None
                             else rate >= target,
                             "peer_generator_saturated": theirs.saturated_generator,
                             "peer_server_cpu_percent": (theirs.stat("server_cpu_percent")
                                                         or (None,))[0]})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"started": self.started, "servers": self.servers, "modes": self.modes,
                "rounds": self.rounds, "settings": self.settings, "versions": self.versions,
                "environment": self.environment,
                "cells": [c.to_dict() for c in self.cells.values()],
                "ratios": self.ratios()}


def _ratio(ours: tuple[float, float, float] | None,
           theirs: tuple[float, float, float] | None) -> float | None:
    if ours is None or theirs is None or not theirs[0]:
        return None
    return ours[0] / theirs[0]


@contextlib.contextmanager
def _generator_cores() -> Iterator[None]:
    """Keep the generator (this process) off core 0, where the servers are pinned."""
    try:
        before = os.sched_getaffinity(0)
    except AttributeError:
        yield
        return
    others = before - {0}
    if not peer_mod.pin_prefix("0") or not others:
        yield
        return
    os.sched_setaffinity(0, others)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def compare(peer_names: list[str], modes: list[str], *, pki: Path, rounds: int = MIN_ROUNDS,
            duration: float = 5.0, warmup: float = 1.0, connections: int = 10,
            streams: int = 10, size: int = 1_000_000, workers: int = 1,
            target: str | None = None, server_pid: int | None = None, install: bool = True,
            progress: bool = False, log=None, **load_options: Any) -> Comparison:
    """Run ``modes`` against tlsgate and each peer, interleaved, ``rounds`` times."""
    from tlsgate.bench.load import run_load
    from tlsgate.bench.load_report import stalled_run_note

    say = log or (lambda text: None)
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    unknown = [p for p in peer_names if p not in peer_mod.PEERS]
    if unknown:
        raise ValueError(f"unknown peer {', '.join(unknown)}: choose from "
                         f"{', '.join(peer_mod.PEERS)}")
    pki = Path(pki)
    settings = {"duration": duration, "warmup": warmup, "connections": connections,
                "streams": streams, "size": size, "workers": workers,
                "tlsgate": target or "started by the bench (bench/peers/tlsgate.toml)",
                **{k: v for k, v in load_options.items() if isinstance(v, str | int | float)}}
    comparison = Comparison(["tlsgate", *peer_names], list(modes), rounds, settings, {},
                            started=datetime.now(UTC).isoformat(timespec="seconds"),
                            environment={"python": platform.python_version(),
                                         "machine": platform.machine(),
                                         "kernel": platform.release(),
                                         "cpus": os.cpu_count(),
                                         "server_pinned": bool(peer_mod.pin_prefix("0"))})
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(peer_mod.start_backend())
        servers: dict[str, peer_mod.RunningServer] = {}
        if target is None:
            servers["tlsgate"] = stack.enter_context(
                peer_mod.start_peer("tlsgate", pki, backend.port))
        else:
            servers["tlsgate"] = peer_mod.external(target, server_pid)
        for name in peer_names:
            why = peer_mod.ensure(name, install=install)
            if why is None:
                try:
                    servers[name] = stack.enter_context(
                        peer_mod.start_peer(name, pki, backend.port))
                except RuntimeError as exc:
                    why = str(exc).splitlines()[0]
            if why is not None:
                say(f"{name}: skipped: {why}")
                for mode in modes:
                    comparison.cell(name, mode).skipped = why
        comparison.versions = {name: server.version for name, server in servers.items()}
        stack.enter_context(_generator_cores())
        sequence = 0              # the order of every run, to show the interleaving
        for mode in modes:
            for round_number in range(1, rounds + 1):
                for name, server in servers.items():
                    cell = comparison.cell(name, mode)
                    if mode not in server.modes:
                        cell.skipped = f"{name} does not serve {mode}"
                        continue
                    say(f"[{mode}] round {round_number}/{rounds}: {name}")
                    result = run_load(server.path_url(mode), mode, pki=pki, duration=duration,
                                      warmup=warmup, connections=connections, streams=streams,
                                      size=size, workers=workers,
                                      server_pid=server.pid or None, progress=progress,
                                      **load_options)
                    stalled = stalled_run_note(result, load_options.get("timeout", 10.0))
                    if stalled is not None:
                        say(f"[{mode}] {name}: {stalled}")
                    sequence += 1
                    cell.runs.append({**result.to_dict(), "round": round_number,
                                      "sequence": sequence})
                    if server.process is not None and server.process.poll() is not None:
                        raise RuntimeError(f"{name} died during {mode}:\n{server.log_tail()}")
    return comparison


# -- reports -----------------------------------------------------------------------------------

def _fmt(stat: tuple[float, float, float] | None, digits: int = 0) -> str:
    if stat is None:
        return "–"
    median, low, high = stat
    return f"{median:,.{digits}f} ({low:,.{digits}f}–{high:,.{digits}f})"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(comparison: Comparison) -> str:
    lines = [f"{comparison.started}, {comparison.rounds} interleaved rounds of "
             f"{comparison.settings['duration']:g} s (after {comparison.settings['warmup']:g} s "
             f"warm-up), {comparison.settings['connections']} connections; median (min–max). "
             "Versions: " + ", ".join(f"{k} {v}" for k, v in comparison.versions.items()) + ".",
             "",
             "| mode | server | req/s | MB/s | server µs/req | server CPU % | p99 ms "
             "| generator µs/req | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in comparison.modes:
        for server in comparison.servers:
            cell = comparison.cells.get((server, mode))
            if cell is None:
                continue
            if cell.skipped:
                lines.append(f"| {mode} | {server} | skipped: {cell.skipped} |||||||")
                continue
            generator = _fmt(cell.stat("generator_cpu_us_per_request"))
            if cell.saturated_generator:
                generator += " (saturated)"
            mbps = _fmt(cell.stat("megabytes_per_second"), 1) if mode == "upload" else "–"
            lines.append(
                f"| {mode} | {server} | {_fmt(cell.stat('requests_per_second'))} | {mbps} | "
                f"{_fmt(cell.stat('server_cpu_us_per_request'))} | "
                f"{_fmt(cell.stat('server_cpu_percent'))} | "
                f"{_fmt(cell.stat_latency('p99'), 2)} | {generator} | {cell.errors:,} |")
    lines += ["", "tlsgate / peer (medians). req/s > 1: tlsgate faster; server µs/req < 1: "
              "tlsgate cheaper; per core = peer µs ÷ tlsgate µs (req/s with one full core "
              "each; the issue's targets are judged on it).", "",
              "| mode | peer | req/s | server µs/req | per core | target | met |",
              "|---|---|---:|---:|---:|---:|---|"]
    for row in comparison.ratios():
        target = "–" if row["target"] is None else f"≥ {row['target']:g}"
        met = "–" if row["met"] is None else ("yes" if row["met"] else "no")
        note = ""
        if row["peer_server_cpu_percent"] is not None and row["peer_server_cpu_percent"] < 90:
            note = (f" (peer at {row['peer_server_cpu_percent']:.0f} % CPU: req/s ratio "
                    "flatters tlsgate)")
        lines.append(f"| {row['mode']} | {row['peer']} | {_x(row['requests_per_second'])}"
                     f"{note} | {_x(row['server_cpu_us_per_request'])} | "
                     f"{_x(row['per_core'])} | {target} | {met} |")
    return "\n".join(lines)


def write_chart(comparison: Comparison, path: Path) -> tuple[bool, str]:
    """Per mode: req/s and server µs/request, medians with min–max whiskers."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False, "matplotlib is not installed (pip install matplotlib)"
    modes = comparison.modes
    fig, axes = plt.subplots(2, len(modes), figsize=(4.2 * len(modes) + 1, 7), squeeze=False)
    colors = ["#cc3311", "#0077bb", "#009988", "#ee7733", "#33bbee", "#aa3377"]
    for column, mode in enumerate(modes):
        for row, (key, label) in enumerate((("requests_per_second", "requests/s"),
                                            ("server_cpu_us_per_request",
                                             "server CPU µs / request"))):
            axis = axes[row][column]
            names, medians, low, high = [], [], [], []
            for server in comparison.servers:
                cell = comparison.cells.get((server, mode))
                stat = cell.stat(key) if cell and not cell.skipped else None
                if stat is None:
                    continue
                names.append(server)
                medians.append(stat[0])
                low.append(stat[0] - stat[1])
                high.append(stat[2] - stat[0])
            bars = axis.bar(names, medians, yerr=[low, high], capsize=3,
                            color=colors[:len(names)])
            axis.bar_label(bars, labels=[f"{v:,.0f}" for v in medians], fontsize=7)
            axis.set_title(f"{mode}: {label}", fontsize=9)
            axis.tick_params(axis="x", labelsize=8, rotation=20)
    fig.suptitle(f"tlsgate bench --peers, {comparison.started}: medians of "
                 f"{comparison.rounds} interleaved rounds (bars: min–max)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True, ""


def main(args: Any, modes: list[str]) -> int:
    """``tlsgate bench --peers …`` (called by load_cli.main)."""
    import json

    from tlsgate.pki import init_pki

    names = [p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "tlsgate"]
    if args.rounds < MIN_ROUNDS:
        print(f"tlsgate bench: --rounds {args.rounds}: fewer than {MIN_ROUNDS} rounds make no "
              "median worth reporting (running anyway)", file=sys.stderr)
    pki = args.pki
    if not (pki / "root.key").exists():
        print(f"tlsgate bench: no PKI in {pki}: writing the development PKI there",
              file=sys.stderr)
        init_pki(pki)
    try:
        comparison = compare(
            names, modes, pki=pki, rounds=args.rounds, duration=args.duration,
            warmup=args.warmup, connections=args.connections, streams=args.streams,
            size=args.size, workers=args.workers, target=args.target,
            server_pid=args.server_pid, progress=not args.no_progress,
            log=lambda text: print(f"tlsgate bench: {text}", file=sys.stderr),
            timeout=args.timeout, tls_lib=args.tls_lib, tls_version=args.tls_version,
            verify=not args.insecure,
            groups=None if args.groups == "default" else args.groups)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"tlsgate bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntlsgate bench: interrupted", file=sys.stderr)
        return 130
    print(markdown(comparison))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(comparison.to_dict(), indent=2) + "\n")
        print(f"JSON: {args.json}")
    chart = args.chart or (args.json.with_suffix(".png") if args.json is not None else None)
    if chart is not None:
        written, why = write_chart(comparison, chart)
        print(f"chart: {chart}" if written else f"chart skipped: {why}")
    ran = [c for c in comparison.cells.values() if not c.skipped]
    return 0 if ran and all(c.stat("requests_per_second") and c.stat("requests_per_second")[0]
                            > 0 for c in ran) else 1
