"""``runqy local``: run a worker on this machine exactly as the Go worker would, and summarise the run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from runqy.cli.options import add_settings_options, add_task_source_options, read_jsonl, settings_arguments
from runqy.errors import ConfigError
from runqy.local.lines import DEFAULT_STARTUP_TIMEOUT_S
from runqy.local.stats import STATUSES, RunSummary

if TYPE_CHECKING:
    from runqy.local.progress import Progress

__all__ = ["add_local_command", "requests_from_args"]


def add_local_command(commands: Any) -> None:
    local = commands.add_parser(
        "local",
        help="start a worker and feed it tasks as the Go worker does",
        description="Start TARGET as the Go worker would, feed it tasks, and summarise what came back.",
    )
    local.add_argument("target", help="the worker: a file (worker.py) or a module (pkg.worker)")
    add_task_source_options(local, default_count=100)
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
    local.add_argument(
        "--deadline-s",
        type=float,
        help="give up on a task after this long, as the Go worker's task timeout does (default: wait)",
    )
    local.add_argument("--startup-timeout-s", type=float, default=DEFAULT_STARTUP_TIMEOUT_S)
    local.add_argument("--quiet-worker", action="store_true", help="do not show the worker's stderr")
    add_settings_options(local)
    local.set_defaults(command=_cmd_local)


def requests_from_args(args: argparse.Namespace) -> tuple[Iterator[dict[str, Any]], int]:
    """The requests that ``--input`` or ``--generate`` describe, and how many there are."""
    from runqy.local.driver import make_request  # the driver, only when a command runs (see _cmd_local)

    if args.input is not None:
        count = sum(1 for _ in read_jsonl(args.input))  # validates every line before the worker starts
        # A full request object (one with a task_id) goes out as written; anything else is a payload.
        requests = (
            item if isinstance(item, dict) and "task_id" in item else make_request(item)
            for item in read_jsonl(args.input)
        )
        return requests, count
    count = args.generate if args.generate is not None else args.default_count
    if count < 0:
        raise ConfigError(f"--generate {count}: expected a number of tasks >= 0")
    template = args.payload
    try:
        json.loads(template.replace("{n}", "0"))
    except ValueError as exc:
        why = f"--payload {template!r} is not JSON ({exc}); expected a JSON value like '{{\"n\": {{n}}}}'"
        raise ConfigError(why) from None
    return (make_request(json.loads(template.replace("{n}", str(n)))) for n in range(count)), count


def _cmd_local(args: argparse.Namespace) -> int:
    # Imported here: ``runqy run`` builds this command's parser too, and needs no driver.
    from runqy.local.driver import LocalWorker
    from runqy.local.progress import Progress

    if args.concurrency < 1:
        raise ConfigError(f"--concurrency {args.concurrency}: expected at least 1 request in flight")
    requests, total = requests_from_args(args)
    progress = Progress(sys.stderr, total)
    output = args.output.open("w") if args.output is not None else sys.stdout
    summary = RunSummary()
    try:
        with LocalWorker.for_target(
            args.target, *settings_arguments(args), on_stderr_line=_stderr_sink(args, progress)
        ) as worker:
            worker.wait_ready(args.startup_timeout_s)
            progress.begin()
            started = time.perf_counter()
            for outcome in worker.run(requests, args.concurrency, deadline_s=args.deadline_s):
                summary.add(outcome)
                if outcome.response is not None:
                    output.write(json.dumps(outcome.response) + "\n")
                progress.update(summary)
            summary.elapsed_s = time.perf_counter() - started
            progress.close()
            stopping = time.perf_counter()
            summary.exit_code = worker.shutdown(args.shutdown)
            stop_s = time.perf_counter() - stopping
    finally:
        progress.close()
        if output is not sys.stdout:
            output.close()
        else:
            output.flush()
    _print_summary(summary, args.shutdown, stop_s, worker.violations, sys.stderr)
    clean = summary.count("lost") == 0 and summary.exit_code == 0 and not worker.violations
    return 0 if clean else 1


def _stderr_sink(args: argparse.Namespace, progress: Progress) -> Callable[[str], None] | None:
    if args.quiet_worker:
        return None
    return lambda line: progress.print_above(f"[worker] {line}")


def _print_summary(summary: RunSummary, how: str, stop_s: float, violations: list[str], out: TextIO) -> None:
    counts = "  ".join(f"{status} {summary.count(status)}" for status in STATUSES)
    print(
        f"runqy local: {summary.total} tasks in {summary.elapsed_s:.2f} s, {summary.tasks_per_s:.1f} tasks/s\n"
        f"  {counts}\n"
        f"  latency p50 {summary.latency_percentile_s(50) * 1000:.1f} ms"
        f"  p99 {summary.latency_percentile_s(99) * 1000:.1f} ms\n"
        f"  worker exit code {summary.exit_code} ({how} took {stop_s:.2f} s)",
        file=out,
    )
    if violations:
        print(f"  {len(violations)} protocol violation(s) the Go worker would not accept:", file=out)
        for why in sorted(set(violations)):
            print(f"    {violations.count(why)} x {why}", file=out)
