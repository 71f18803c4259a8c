#!/usr/bin/env python3
"""``tlsgate bench`` without the CLI: ``python bench/run_bench.py --target URL --mode h1 ...``.

The flags are those of :func:`tlsgate.bench.load_cli.add_arguments`; see bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tlsgate.bench import load_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_bench.py", description=load_cli.DESCRIPTION)
    load_cli.add_arguments(parser)
    return load_cli.main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
