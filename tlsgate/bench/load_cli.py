"""Command line of ``tlsgate bench`` (and bench/run_bench.py): flags, then tables and files.

Wiring, for ``tlsgate/cli.py``::

    bench = commands.add_parser("bench", help="load a TLS server on loopback with client "
                                "certificates", description=load_cli.DESCRIPTION)
    load_cli.add_arguments(bench)
    bench.set_defaults(run=load_cli.main)

Only this module and :mod:`~tlsgate.bench.load_common` are imported to build the parser; the
generator itself (h2, OpenSSL) is imported when ``main`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tlsgate.bench.load_common import (
    DEFAULT_CONNECTIONS,
    DEFAULT_GROUPS,
    DEFAULT_SIZE,
    DEFAULT_STREAMS,
    MODES,
    TLS_LIBS,
)

DESCRIPTION = ("Drive load with client certificates against a TLS server on loopback "
               "(127.0.0.1 or ::1 only): full or resumed handshakes per second, keep-alive "
               "HTTP/1.1 and HTTP/2 requests per second, uploads in MB/s; latency "
               "percentiles, errors by kind, the generator's CPU and, with --server-pid, the "
               "server's CPU time per request. Prints a Markdown table; --json writes the "
               "figures and a PNG chart beside them.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tlsgate bench`` flags (also used by bench/run_bench.py)."""
    parser.add_argument("--target",
                        help="https URL on loopback, e.g. https://localhost:8443/echo (its host "
                             "is the SNI name and Host header); required unless --peers, "
                             "where it names a running tlsgate (with --server-pid) instead of "
                             "one the bench starts")
    parser.add_argument("--peers",
                        help="compare with peers started on loopback: comma-separated from "
                             "nginx, haproxy, hypercorn, uvicorn (bench/peers/); interleaved "
                             "rounds, medians, a tlsgate/peer ratio table")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--peers: interleaved rounds per mode and server (default 3)")
    parser.add_argument("--mode", default="h1",
                        help=f"{', '.join(MODES)}; several comma-separated, or 'all' "
                             "(default h1)")
    parser.add_argument("--pki", type=Path, default=Path(".tlsgate/pki"),
                        help="development PKI: client.pem, client.key, root.pem "
                             "(default .tlsgate/pki)")
    parser.add_argument("--cert", type=Path, help="client certificate chain (PEM)")
    parser.add_argument("--key", type=Path, help="its private key (PEM)")
    parser.add_argument("--cacert", type=Path, help="CA to check the server with")
    parser.add_argument("--insecure", action="store_true",
                        help="do not check the server certificate (less generator CPU)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds (default 10)")
    parser.add_argument("--requests", type=int,
                        help="measure this many successful requests instead of a duration")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before measuring (default 1)")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS,
                        help=f"concurrent connections (default {DEFAULT_CONNECTIONS})")
    parser.add_argument("--streams", type=int, default=DEFAULT_STREAMS,
                        help=f"h2: concurrent streams per connection (default {DEFAULT_STREAMS})")
    parser.add_argument("--size", type=_size, default=DEFAULT_SIZE,
                        help="upload: body bytes per POST, e.g. 1M, 64K (default 1000000)")
    parser.add_argument("--workers", type=int, default=1,
                        help="generator processes (default 1)")
    parser.add_argument("--server-pid", type=int,
                        help="charge this process's CPU time (and its children's) per request")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds before a request counts as a timeout (default 10)")
    parser.add_argument("--expect-status", type=int, default=200,
                        help="other statuses count as errors (default 200)")
    parser.add_argument("--tls", choices=["1.2", "1.3"], dest="tls_version",
                        help="pin the TLS version (default: negotiate, 1.3)")
    parser.add_argument("--tls-lib", choices=TLS_LIBS, default="auto",
                        help="client TLS: auto = pyopenssl for handshake/resume, ssl otherwise")
    parser.add_argument("--groups", default=DEFAULT_GROUPS,
                        help="key exchange groups the pyopenssl client offers, colon-separated "
                             f"(default {DEFAULT_GROUPS}; 'default' = its OpenSSL's own list, "
                             "X25519MLKEM768 first)")
    parser.add_argument("--connect", help="loopback address to connect to (127.0.0.1 or ::1) "
                                          "when the target's host is another name")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--chart", type=Path,
                        help="write a PNG bar chart (default: next to --json when given)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress line on stderr")


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = 1
    for suffix, factor in (("K", 1024), ("M", 1024 * 1024), ("G", 1024 ** 3)):
        if text.endswith(suffix):
            text, scale = text[:-1], factor
            break
    try:
        value = int(float(text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("size must not be negative")
    return value


def _modes(text: str) -> list[str]:
    if text.strip() == "all":
        return list(MODES)
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown mode {', '.join(unknown) or text!r}: "
                         f"choose from {', '.join(MODES)} or all")
    return modes


def main(args: argparse.Namespace) -> int:
    """Run the modes ``args`` ask for; print a Markdown table; write JSON and a chart."""
    from tlsgate.bench.load import LoadResult, parse_target, run_load
    from tlsgate.bench.load_report import markdown_table, stalled_run_note, write_chart

    try:
        modes = _modes(args.mode)
        if getattr(args, "peers", None):
            if args.target is not None:
                parse_target(args.target, args.connect)
            from tlsgate.bench import compare
            return compare.main(args, modes)
        if args.target is None:
            raise ValueError("--target is required (or --peers to start the servers)")
        parse_target(args.target, args.connect)
    except ValueError as exc:
        print(f"tlsgate bench: {exc}", file=sys.stderr)
        return 2
    pki = args.pki if (args.cert is None or args.cacert is None) else None
    results: list[LoadResult] = []
    for mode in modes:
        try:
            result = run_load(
                args.target, mode, pki=pki, duration=args.duration, requests=args.requests,
                warmup=args.warmup, connections=args.connections, streams=args.streams,
                size=args.size, workers=args.workers, server_pid=args.server_pid,
                timeout=args.timeout, expect_status=args.expect_status, tls_lib=args.tls_lib,
                tls_version=args.tls_version, verify=not args.insecure, connect=args.connect,
                cert=args.cert, key=args.key, cacert=args.cacert,
                groups=None if args.groups == "default" else args.groups,
                progress=not args.no_progress)
        except (ValueError, RuntimeError, OSError) as exc:
            print(f"tlsgate bench: {mode}: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"\ntlsgate bench: {mode}: interrupted", file=sys.stderr)
            return 130
        results.append(result)
        stalled = stalled_run_note(result, args.timeout)
        if stalled is not None:
            print(f"tlsgate bench: {mode}: {stalled}", file=sys.stderr)
        if result.generator_saturated:
            print(f"tlsgate bench: {mode}: the generator was saturated (a worker busy > 90%): "
                  "add --workers or free a core; the server was not the limit",
                  file=sys.stderr)
    print(markdown_table(results))
    for result in results:
        for sample in result.error_samples:
            print(f"  {result.mode}: {sample}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        print(f"JSON: {args.json}")
    chart = args.chart or (args.json.with_suffix(".png") if args.json is not None else None)
    if chart is not None:
        written, why = write_chart(results, chart)
        print(f"chart: {chart}" if written else f"chart skipped: {why}")
    return 0 if all(r.requests > 0 for r in results) else 1
