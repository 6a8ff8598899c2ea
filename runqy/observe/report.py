"""How the worker is doing: :class:`WorkerStats` (``Worker.stats()``) and the periodic stats line."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from runqy.observe.telemetry import OUTCOMES, Tally, Telemetry, quantile_s
from runqy.runners.base import Runner

__all__ = ["StatsReporter", "WorkerStats", "collect_stats"]

stats_log = logging.getLogger("runqy.stats")


@dataclass(frozen=True)
class WorkerStats:
    """A worker's figures: counts since start (or over the last interval, in the stats line) and gauges now.

    Durations are measured only when something uses them (``stats_interval_s``,
    ``metrics_port``, ``slow_task_s`` or ``log_every_task`` set); the percentiles are
    None otherwise, and estimated from a histogram with fixed buckets when measured.
    """

    #: Seconds the figures cover.
    period_s: float
    #: Tasks answered, by outcome (ok, failed, retry, timed_out, crashed, gave_up).
    outcomes: dict[str, int]
    #: Attempts that failed and were tried again here (``max_retries``).
    retried: int
    duration_p50_s: float | None
    duration_p99_s: float | None
    #: Tasks accepted and not answered yet.
    in_flight: int
    #: Tasks the runner runs at once.
    capacity: int
    #: Timed-out attempts whose threads are still running.
    abandoned_threads: int
    #: Child processes replaced, by cause (crashed, timeout, memory, max_tasks, abandoned_threads).
    child_restarts: dict[str, int]
    #: Resident memory of each child process with its descendants, by pid.
    child_rss_bytes: dict[int, int]
    #: Second answers the runner gave for a task, dropped: always 0 unless the runner has a bug.
    duplicate_replies: int = 0
    #: Answers that came after shutdown had given up on their task, dropped.
    late_replies: int = 0
    #: Calls of a batch handler (``@task(batch_size=...)``), and the tasks they carried.
    batch_calls: int = 0
    batched_tasks: int = 0

    @property
    def answered(self) -> int:
        return sum(self.outcomes.values())

    @property
    def tasks_per_s(self) -> float:
        return self.answered / self.period_s if self.period_s > 0 else 0.0

    @property
    def mean_batch_size(self) -> float | None:
        """Tasks per batch handler call; None when the handler was not called in batches."""
        return self.batched_tasks / self.batch_calls if self.batch_calls else None

    def line(self) -> str:
        """The stats line: one line, every figure named."""
        outcomes = " ".join(f"{outcome} {self.outcomes.get(outcome, 0)}" for outcome in OUTCOMES)
        restarts = " ".join(f"{cause}={n}" for cause, n in sorted(self.child_restarts.items()) if n) or "0"
        rss = " ".join(f"{pid}={n / 2**20:.0f}MiB" for pid, n in sorted(self.child_rss_bytes.items())) or "-"
        batches = "" if self.mean_batch_size is None else f" batches {self.batch_calls} mean {self.mean_batch_size:.1f}"
        return (
            f"stats {self.period_s:.0f}s: done {self.answered} {outcomes} retried {self.retried} "
            f"{self.tasks_per_s:.1f} tasks/s p50 {_ms(self.duration_p50_s)} p99 {_ms(self.duration_p99_s)} "
            f"in_flight {self.in_flight}/{self.capacity} abandoned {self.abandoned_threads} "
            f"child_restarts {restarts} child_rss {rss} duplicate_replies {self.duplicate_replies}{batches}"
        )


def collect_stats(tally: Tally, period_s: float, runner: Runner | None, in_flight: int) -> WorkerStats:
    """Combine counts (a whole tally, or the difference over an interval) with the runner's gauges now."""
    buckets = tally.merged_buckets()
    return WorkerStats(
        period_s=period_s,
        outcomes=tally.by_outcome(),
        retried=sum(tally.retried.values()),
        duration_p50_s=quantile_s(buckets, 0.5),
        duration_p99_s=quantile_s(buckets, 0.99),
        in_flight=in_flight,
        capacity=runner.capacity if runner is not None else 0,
        abandoned_threads=runner.abandoned_attempts if runner is not None else 0,
        child_restarts=tally.child_restarts,
        child_rss_bytes=runner.child_memory() if runner is not None else {},
        duplicate_replies=tally.duplicate_replies,
        late_replies=tally.late_replies,
        batch_calls=tally.batch_calls,
        batched_tasks=tally.batched_tasks,
    )


class StatsReporter:
    """Logs a stats line on ``runqy.stats`` every ``interval_s``, about that interval, and a last one when stopped."""

    def __init__(self, telemetry: Telemetry, runner: Runner, in_flight: Callable[[], int], interval_s: float) -> None:
        self._telemetry = telemetry
        self._runner = runner
        self._in_flight = in_flight
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._report, name="runqy-stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _report(self) -> None:
        before, since = self._telemetry.tally(), time.monotonic()
        while True:
            stopping = self._stopped.wait(self._interval_s)
            now_tally, now = self._telemetry.tally(), time.monotonic()
            # The last line covers the time since the previous one: what the worker did
            # before it exited is not lost between two intervals.
            self._log(now_tally.minus(before), now - since)
            if stopping:
                return
            before, since = now_tally, now

    def _log(self, tally: Tally, period_s: float) -> None:
        try:
            stats = collect_stats(tally, period_s, self._runner, self._in_flight())
            record = stats_log.makeRecord(stats_log.name, logging.INFO, __file__, 0, stats.line(), (), None)
            record.runqy_event = "stats"
            record.runqy_fields = _fields(stats)
            stats_log.handle(record)
        except Exception:  # noqa: BLE001 - a figure that cannot be read must not end the reports
            stats_log.exception("cannot report the worker's stats")


def _fields(stats: WorkerStats) -> dict[str, object]:
    return {
        "period_s": round(stats.period_s, 3),
        "done": stats.answered,
        "outcomes": stats.outcomes,
        "retried": stats.retried,
        "tasks_per_s": round(stats.tasks_per_s, 3),
        "duration_p50_s": stats.duration_p50_s,
        "duration_p99_s": stats.duration_p99_s,
        "in_flight": stats.in_flight,
        "capacity": stats.capacity,
        "abandoned_threads": stats.abandoned_threads,
        "child_restarts": stats.child_restarts,
        "child_rss_bytes": {str(pid): n for pid, n in stats.child_rss_bytes.items()},
        "duplicate_replies": stats.duplicate_replies,
        "late_replies": stats.late_replies,
        "batch_calls": stats.batch_calls,
        "batched_tasks": stats.batched_tasks,
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"
