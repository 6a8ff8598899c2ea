"""``runqy run``: serve a worker over stdin/stdout, as the Go worker starts it."""

from __future__ import annotations

import argparse
from typing import Any

from runqy.cli.options import add_settings_options, settings_overrides

__all__ = ["add_run_command"]


def add_run_command(commands: Any) -> None:
    run = commands.add_parser("run", help="serve a worker over stdin/stdout, as the Go worker starts it")
    run.add_argument("target", help="the worker: a file (worker.py) or a module (pkg.worker)")
    run.add_argument("--once", action="store_true", help="serve exactly one task (one-shot mode)")
    add_settings_options(run)
    run.set_defaults(command=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from runqy import worker
    from runqy.config.resolve import load_settings
    from runqy.target import import_target

    settings = load_settings(**settings_overrides(args))
    import_target(args.target)
    if worker.served_in_this_process():
        return 0  # the module called run() itself while being imported, and that run is over
    with worker.Worker(settings) as serve:
        if args.once:
            serve.run_once()
        else:
            serve.run()
    return 0
