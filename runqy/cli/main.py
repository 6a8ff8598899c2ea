"""The ``runqy`` command: serve a worker, drive one locally as the Go worker does, compare runners, inspect settings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from runqy.cli.bench import add_bench_command
from runqy.cli.config import add_config_command
from runqy.cli.local import add_local_command
from runqy.cli.run import add_run_command
from runqy.errors import RunqyError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args))
    except (RunqyError, ValueError) as exc:
        # ConfigError is a ValueError; anything else reaching here is a user-facing mistake too.
        print(f"runqy: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runqy", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    add_run_command(commands)
    add_local_command(commands)
    add_bench_command(commands)
    add_config_command(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
