"""``runqy bench``: run the user's handler under each runner on the same tasks and say which fits."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from runqy.cli.options import add_settings_options, add_task_source_options, read_jsonl, settings_arguments
from runqy.config.catalog import BUILTIN_RUNNERS
from runqy.errors import ConfigError
from runqy.local.lines import DEFAULT_STARTUP_TIMEOUT_S

__all__ = ["add_bench_command"]


def add_bench_command(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="compare the runners on your own handler and sample payloads",
        description=(
            "Run TARGET's handler on the same tasks, with the same number in flight, under each runner, "
            "and print throughput, latency, CPU and memory side by side with a recommendation."
        ),
    )
    bench.add_argument("target", help="the worker: a file (worker.py) or a module (pkg.worker)")
    add_task_source_options(bench, default_count=200)
    bench.add_argument(
        "--runners",
        # The catalog's names: which of them this installation has is known only by importing every runner,
        # which every `runqy run` would then pay for, since all subcommands are registered at start.
        help=f"comma-separated runners to compare (default: every one of {', '.join(BUILTIN_RUNNERS)} "
        "available in this installation)",
    )
    bench.add_argument(
        "--tasks", type=int, metavar="N", help="timed tasks per runner, cycling through the payloads (default 200)"
    )
    bench.add_argument("--concurrency", type=int, default=16, help="requests in flight, the same for every runner")
    bench.add_argument("--timeline", type=Path, metavar="FILE.svg", help="also draw each run's schedule as SVG")
    bench.add_argument("--startup-timeout-s", type=float, default=DEFAULT_STARTUP_TIMEOUT_S)
    add_settings_options(bench)
    bench.set_defaults(command=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from runqy.local.bench import STATS_INTERVAL_S, compare, format_table, measure, recommend
    from runqy.local.driver import WorkerStartFailed
    from runqy.local.timeline import assign_slots, write_svg

    runners = _runners(args.runners)
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency {args.concurrency}: expected at least 1 request in flight")
    if args.input is not None:
        payloads = [item.get("payload") if _is_request(item) else item for item in read_jsonl(args.input)]
    else:
        payloads = [json.loads(args.payload.replace("{n}", "0"))]
    tasks = args.tasks if args.tasks is not None else args.generate if args.generate is not None else args.default_count
    if tasks < 1:
        raise ConfigError(f"--tasks {tasks}: expected at least 1 task to time")
    settings = [arg for arg in settings_arguments(args)]
    if "--runner" in settings or "--runner-cls" in settings:
        raise ConfigError("runqy bench chooses the runner itself: use --runners NAME,NAME instead of --runner")
    results = []
    for name in runners:
        sizing = _sized_to_window(name, args)
        print(
            f"runqy bench: {name}: {tasks} tasks, {args.concurrency} in flight {' '.join(sizing)}".rstrip(),
            file=sys.stderr,
            flush=True,
        )
        argv = [sys.executable, "-m", "runqy", "run", args.target, "--runner", name, "--log-level", "INFO"]
        argv += [*settings, *sizing]
        if "--stats-interval-s" not in settings:
            # Its stats line at exit tells how full the batch handler's calls were.
            argv += ["--stats-interval-s", str(STATS_INTERVAL_S)]
        try:
            result = measure(
                name,
                argv,
                payloads,
                tasks=tasks,
                concurrency=args.concurrency,
                startup_timeout_s=args.startup_timeout_s,
            )
        except WorkerStartFailed as exc:
            if name != "async" or "plain def" not in str(exc):
                raise
            print("runqy bench: async: skipped, it runs only async def handlers", file=sys.stderr, flush=True)
            continue
        results.append(result)
    compare(results)
    print(format_table(results))
    print(recommend(results))
    if args.timeline is not None:
        write_svg(args.timeline, [(r.name, assign_slots(r.outcomes, r.capacity)) for r in results])
        print(f"timeline written to {args.timeline}", file=sys.stderr)
    return 0 if all(r.summary.count("lost") == 0 for r in results) else 1


def _sized_to_window(runner: str, args: argparse.Namespace) -> list[str]:
    """Give the pooled runners as many threads as tasks in flight, unless the user sized them.

    Left at their defaults, a thread runner (cores + 4 threads) and a hybrid one
    (processes x 4 threads) would differ in slots, and the comparison would measure
    the pool sizes instead of the runners.
    """
    options = vars(args)
    if runner == "thread" and options.get("setting:runner.max_threads") is None:
        return ["--max-threads", str(args.concurrency)]
    if runner == "hybrid" and options.get("setting:runner.threads_per_process") is None:
        import psutil

        processes = options.get("setting:runner.num_processes") or psutil.cpu_count(logical=False) or 1
        return ["--threads-per-process", str(max(1, math.ceil(args.concurrency / processes)))]
    return []


def _is_request(item: Any) -> bool:
    return isinstance(item, dict) and "task_id" in item


def _runners(option: str | None) -> list[str]:
    from runqy.local.bench import available_runners

    available = available_runners()
    if option is None:
        return available
    chosen = [name.strip() for name in option.split(",") if name.strip()]
    missing = [name for name in chosen if name not in available]
    if missing:
        raise ConfigError(f"--runners: {', '.join(missing)} not available; expected some of {', '.join(available)}")
    return chosen
