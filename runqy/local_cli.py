"""``runqy local``: run a worker on this machine exactly as the Go worker would, and summarise the run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runqy.local import DEFAULT_STARTUP_TIMEOUT_S, LocalWorker, RunSummary, forward_stderr, make_request

__all__ = ["add_local_command"]


def add_local_command(commands: Any) -> None:
    from runqy.cli import _add_settings_options

    local = commands.add_parser("local", help="start a worker and feed it tasks as the Go worker does")
    local.add_argument("target", help="the worker: a file (worker.py) or a module (pkg.worker)")
    source = local.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, help="JSON lines: payloads, or full request objects with a task_id")
    source.add_argument("--generate", type=int, metavar="N", help="send N generated tasks (default 100)")
    local.add_argument(
        "--payload",
        default='{"text": "the quick brown fox jumps over the lazy dog"}',
        help="JSON payload of generated tasks; {n} in it is replaced by the task number",
    )
    local.add_argument(
        "--concurrency", type=int, default=1, help="requests outstanding at once, as the worker's concurrency"
    )
    local.add_argument("--output", type=Path, help="write responses here as JSON lines (default: stdout)")
    local.add_argument(
        "--shutdown",
        choices=["close-stdin", "term"],
        default="close-stdin",
        help="how to stop the worker at the end: close its stdin, or SIGTERM with stdin open",
    )
    local.add_argument("--startup-timeout-s", type=float, default=DEFAULT_STARTUP_TIMEOUT_S)
    local.add_argument("--quiet-worker", action="store_true", help="do not show the worker's stderr")
    _add_settings_options(local)
    local.set_defaults(command=_cmd_local)


def _requests(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    if args.input is not None:
        from runqy.cli import read_jsonl

        for item in read_jsonl(args.input):
            yield item if isinstance(item, dict) and "task_id" in item else make_request(item)
        return
    for n in range(args.generate if args.generate is not None else 100):
        yield make_request(json.loads(args.payload.replace("{n}", str(n))))


def _cmd_local(args: argparse.Namespace) -> int:
    from runqy.cli import settings_arguments

    stderr_sink = None if args.quiet_worker else forward_stderr()
    output = args.output.open("w") if args.output is not None else sys.stdout
    summary = RunSummary()
    with LocalWorker.for_target(args.target, *settings_arguments(args), on_stderr_line=stderr_sink) as worker:
        worker.wait_ready(args.startup_timeout_s)
        started = time.perf_counter()
        for outcome in worker.run(_requests(args), max(1, args.concurrency)):
            summary.outcomes.append(outcome)
            if outcome.response is not None:
                output.write(json.dumps(outcome.response) + "\n")
        summary.elapsed_s = time.perf_counter() - started
        summary.exit_code = worker.shutdown(args.shutdown)
    if output is not sys.stdout:
        output.close()
    print(f"runqy local: {summary.describe()}", file=sys.stderr)
    return 0 if summary.count("lost") == 0 and summary.exit_code == 0 else 1
