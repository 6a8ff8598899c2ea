"""Measure one handler under several runners with the same tasks and in-flight window, and compare.

Each runner gets a fresh worker process started as the Go worker starts it. A warm-up
of one window of tasks runs first and is not counted; then every task goes through
:meth:`LocalWorker.run` while :class:`TreeSampler` watches the process tree. The result
of a run is a :class:`BenchResult`; :func:`format_table` and :func:`recommend` turn a
list of them into what ``runqy bench`` prints.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from runqy.config.settings import RUNNER_ALIASES, resolve_runner_class
from runqy.errors import ConfigError
from runqy.local.driver import DEFAULT_STARTUP_TIMEOUT_S, LocalWorker, make_request
from runqy.local.procstats import TreeSampler, TreeUsage
from runqy.local.stats import Outcome, RunSummary

__all__ = ["BenchResult", "available_runners", "format_table", "measure", "recommend"]

#: A runner must beat a lighter one by this much to be worth its cost (processes, memory).
_WORTH_IT: Final = 1.1
#: Lighter first: on a tie, the recommendation prefers the simpler runner.
#: The async runner is lighter than a thread pool: one loop thread, however many tasks are in flight.
_WEIGHT_ORDER: Final = ("sequential", "async", "thread", "process", "hybrid")
_WHY: Final = {
    "async": "the handler is async def and waits: one event loop keeps every request in flight, with no thread each",
    "thread": "the handler waits (I/O, sleep, or code that releases the GIL), and threads overlap the waiting",
    "process": "the handler holds the GIL, and only separate processes run it on several cores",
    "hybrid": "the handler both computes and waits: processes for the cores, threads in each for the waiting",
}
# The worker logs ``ready: <SomeRunner capacity=N ...>``: how many tasks it runs at once.
_CAPACITY = re.compile(r"ready: <\w+ capacity=(\d+)\b")
# A stats line of a batch handler's worker ends ``batches CALLS mean SIZE``; in JSON, the fields.
_BATCHES = re.compile(r"\bstats \S+: .* batches (\d+) mean ([\d.]+)")
#: The bench asks the worker for a stats line this often: in effect only the one it logs at exit.
STATS_INTERVAL_S: Final = 86_400


@dataclass
class BenchResult:
    """One runner's figures on the benchmark's tasks."""

    name: str
    summary: RunSummary
    usage: TreeUsage
    #: Tasks the worker runs at once, as it reported at start-up (None if it did not say).
    capacity: int | None
    #: Requests kept in flight during the run.
    concurrency: int
    outcomes: list[Outcome] = field(default_factory=list, repr=False)
    #: Filled in by :func:`compare` against the sequential runner's throughput.
    speedup: float | None = None
    #: Tasks per handler call over the whole run, warm-up included; None unless the handler batches.
    mean_batch_size: float | None = None

    @property
    def cpu_percent(self) -> float:
        """CPU time of the whole process tree over wall time (200 = two cores busy)."""
        return 100 * self.usage.cpu_s / self.summary.elapsed_s if self.summary.elapsed_s > 0 else 0.0


def available_runners() -> list[str]:
    """The runner aliases this installation provides (a runner still under construction is left out)."""
    names = []
    for name in RUNNER_ALIASES:
        try:
            resolve_runner_class(name)
        except ConfigError:
            continue
        names.append(name)
    return names


def measure(
    name: str,
    argv: Sequence[str],
    payloads: Sequence[Any],
    *,
    tasks: int,
    concurrency: int,
    env: dict[str, str] | None = None,
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> BenchResult:
    """Start ``argv`` as a worker, warm it up with one window of tasks, then time ``tasks`` tasks.

    Payloads are used round-robin, so every runner sees the same tasks in the same order.
    """
    if not payloads:
        raise ConfigError("no sample payloads: give --input FILE.jsonl or --payload JSON")
    with LocalWorker(argv, env=env) as worker:
        worker.wait_ready(startup_timeout_s)
        warmup = [make_request(payloads[i % len(payloads)]) for i in range(concurrency)]
        for _ in worker.run(warmup, concurrency):
            pass
        requests = [make_request(payloads[i % len(payloads)]) for i in range(tasks)]
        sampler = TreeSampler(worker.pid)
        sampler.start()
        summary = RunSummary()
        outcomes: list[Outcome] = []
        started = time.perf_counter()
        for outcome in worker.run(requests, concurrency):
            summary.add(outcome)
            outcomes.append(outcome)
        summary.elapsed_s = time.perf_counter() - started
        usage = sampler.stop()
        summary.exit_code = worker.shutdown("close-stdin")
        capacity = next((int(m.group(1)) for line in worker.stderr_lines if (m := _CAPACITY.search(line))), None)
        batch_size = mean_batch_size(worker.stderr_lines)
    return BenchResult(name, summary, usage, capacity, concurrency, outcomes, mean_batch_size=batch_size)


def mean_batch_size(stderr_lines: Sequence[str]) -> float | None:
    """Tasks per handler call, from the worker's stats lines (text or JSON); None when it did not batch."""
    calls = tasks = 0.0
    for line in stderr_lines:
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                document = json.loads(line)
                if isinstance(document, dict) and document.get("event") == "stats":
                    calls += document.get("batch_calls", 0)
                    tasks += document.get("batched_tasks", 0)
        elif m := _BATCHES.search(line):
            calls, tasks = calls + int(m.group(1)), tasks + int(m.group(1)) * float(m.group(2))
    return tasks / calls if calls else None


def compare(results: list[BenchResult], baseline: str = "sequential") -> None:
    """Set each result's speed-up against the ``baseline`` run (left None without one)."""
    base = next((r for r in results if r.name == baseline), None)
    if base is None or base.summary.tasks_per_s <= 0:
        return
    for result in results:
        result.speedup = result.summary.tasks_per_s / base.summary.tasks_per_s


def recommend(results: list[BenchResult]) -> str:
    """One line naming the runner to use for this handler, and why."""
    ranked = [r for r in results if r.summary.count("lost") == 0 and r.summary.tasks_per_s > 0]
    if not ranked:
        return "no runner answered every task: see the worker's stderr above"
    best = max(ranked, key=lambda r: r.summary.tasks_per_s)
    # The lightest runner within reach of the best wins: fewer processes and threads to operate.
    enough = [r for r in ranked if r.summary.tasks_per_s * _WORTH_IT >= best.summary.tasks_per_s]
    pick = min(enough, key=lambda r: _WEIGHT_ORDER.index(r.name) if r.name in _WEIGHT_ORDER else len(_WEIGHT_ORDER))
    if pick.name == "sequential":
        return "recommendation: keep the sequential runner (the default): no other runner was 10% faster on these tasks"
    versus = f"{pick.speedup:.1f}x the sequential runner" if pick.speedup else f"{pick.summary.tasks_per_s:.0f} tasks/s"
    why = _WHY.get(pick.name, "it was the fastest on these tasks")
    return f'recommendation: runner_cls = "{pick.name}" ({versus}): {why}'


def format_table(results: list[BenchResult]) -> str:
    """The comparison as an aligned text table."""
    header: tuple[str, ...] = ("runner", "tasks/s", "p50 ms", "p99 ms", "speed-up", "CPU %", "procs", "peak RSS/proc")
    batched = any(r.mean_batch_size is not None for r in results)
    header += ("batch", "failed", "lost") if batched else ("failed", "lost")
    rows = [header]
    for r in results:
        failed = r.summary.count("failed") + r.summary.count("retryable")
        rows.append(
            (
                r.name,
                f"{r.summary.tasks_per_s:.1f}",
                f"{r.summary.latency_percentile_s(50) * 1000:.2f}",
                f"{r.summary.latency_percentile_s(99) * 1000:.2f}",
                "-" if r.speedup is None else f"{r.speedup:.2f}x",
                f"{r.cpu_percent:.0f}",
                str(r.usage.processes),
                f"{r.usage.peak_rss_bytes / 2**20:.1f} MiB",
                *(() if not batched else ("-" if r.mean_batch_size is None else f"{r.mean_batch_size:.1f}",)),
                str(failed),
                str(r.summary.count("lost")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(_align(i, cell, widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _align(column: int, cell: str, width: int) -> str:
    return cell.ljust(width) if column == 0 else cell.rjust(width)
