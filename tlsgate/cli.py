"""Command line: ``tlsgate serve | check-config | pki init | deadlock | bench``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) != "serve":
        # `tlsgate ... | head` ends quietly. Never for the server: with SIGPIPE at its default
        # action, a write to a socket the client reset would kill the gateway.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlsgate", description=__doc__)
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the gateway in the foreground")
    serve.add_argument("--config", required=True, type=Path)
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check-config", help="load everything, report every error")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_check_config)

    pki = commands.add_parser("pki", help="development PKI")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True)
    init = pki_commands.add_parser("init", help="write a development PKI into DIR")
    init.add_argument("dir", type=Path)
    init.add_argument("--key-type", choices=["ec", "rsa"], default="ec")
    init.add_argument("--force", action="store_true", help="overwrite an existing PKI")
    init.set_defaults(run=_pki_init)

    deadlock = commands.add_parser(
        "deadlock", help="run the on-demand certificate deadlock matrix with real clients",
        description="Start a gateway on a loopback port and run every cell of body size x "
                    "method x on_demand_body mode x TLS x HTTP x client; print Markdown tables "
                    "and write deadlock.md, deadlock.csv and deadlock.png into --out. "
                    "List flags take comma-separated values.")
    deadlock.add_argument("--quick", action="store_true",
                          help="a small subset (16K and 64K, POST, curl and http.client, "
                               "timeout 2 s); other flags override it")
    deadlock.add_argument("--sizes", help="body sizes, e.g. 0,16K,49153,1M "
                                          "(default 0,16K,48K,49153,64K,1M,10M)")
    deadlock.add_argument("--modes", help="stall,buffer,spool,handshake (default: all)")
    deadlock.add_argument("--tls", help="1.2,1.3 (default: both)")
    deadlock.add_argument("--http", help="1.1,2 (default: both)")
    deadlock.add_argument("--clients", help="curl,curl-expect,pyhttp-pha,pyhttp-nopha,s_client "
                                            "(default: all)")
    deadlock.add_argument("--methods", help="POST,PUT (default: both)")
    deadlock.add_argument("--timeout", type=float,
                          help="the gateway's on_demand_timeout in seconds (default 5)")
    deadlock.add_argument("--out", type=Path, help="output directory (default bench/deadlock)")
    deadlock.add_argument("--jobs", type=int, default=8, help="cells run at once (default 8)")
    deadlock.add_argument("--workdir", type=Path,
                          help="keep the PKI, bodies, gateway.toml and gateway.log here "
                               "(default: a temporary directory, removed)")
    deadlock.add_argument("--no-progress", action="store_true",
                          help="no progress line on stderr")
    deadlock.set_defaults(run=_deadlock)

    from tlsgate.bench import load_cli  # light: h2 and OpenSSL load when the run starts

    bench = commands.add_parser(
        "bench", help="load a TLS server on loopback with client certificates",
        description=load_cli.DESCRIPTION)
    load_cli.add_arguments(bench)
    bench.set_defaults(run=load_cli.main)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from tlsgate.config.errors import ConfigError
    from tlsgate.server.server import run

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return run(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:  # port in use, permission denied
        print(f"tlsgate: {exc}", file=sys.stderr)
        return 1


def _check_config(args: argparse.Namespace) -> int:
    from tlsgate.config.errors import ConfigError
    from tlsgate.config.loader import load_config
    from tlsgate.server.runtime import Runtime

    try:  # everything `serve` builds (TLS contexts, pipeline), not only the file
        Runtime.build(load_config(args.file))
        problems = []
    except ConfigError as error:
        problems = [str(problem) for problem in error.problems]
    for line in problems:
        print(line)
    if problems:
        return 2
    print(f"{args.file}: OK")
    return 0


def _pki_init(args: argparse.Namespace) -> int:
    from tlsgate.pki import init_pki

    paths = init_pki(args.dir, key_type=args.key_type, force=args.force)
    for name, path in sorted(paths.items()):
        print(f"{name:24} {path}")
    return 0


def _deadlock(args: argparse.Namespace) -> int:
    from tlsgate.bench import deadlock

    try:
        options = deadlock.resolve_options(
            quick=args.quick, sizes=args.sizes, modes=args.modes, tls=args.tls, http=args.http,
            clients=args.clients, methods=args.methods, timeout=args.timeout, out=args.out,
            jobs=args.jobs, workdir=args.workdir, progress=not args.no_progress)
    except ValueError as exc:
        print(f"tlsgate deadlock: {exc}", file=sys.stderr)
        return 2
    return deadlock.main(options)


if __name__ == "__main__":
    sys.exit(main())
