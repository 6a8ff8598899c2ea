"""What runners tell about tasks, counted cheaply enough for the hot path, and logged when it matters.

A runner calls its observer once per answered task (:meth:`TaskObserver.finished`), once
per local retry, once per abandoned thread and once per replaced child; the serving loop
calls it for each second answer it drops. :class:`Telemetry`
counts these and writes a line for each task that went wrong or was slow::

    any thread ── finished() ──> its own shard: counts by (type, outcome), duration histogram
                      └─ failed, retried, timed out, slow, or every task if asked ──> a "runqy.tasks" line
    reader (stats line, scrape, Worker.stats()) ── tally() ──> the shards summed

Counting takes no lock: each thread writes only its own shard, and a reader copies each
shard's dict and lists in single C calls, which the GIL makes atomic. Durations are
measured only when something uses them (``measures``): two clock reads per task are a
few per cent of a no-op task, which the default configuration does not pay.
"""

from __future__ import annotations

import bisect
import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from runqy.protocol import TaskRequest

__all__ = [
    "CRASHED",
    "DURATION_BUCKETS_S",
    "FAILED",
    "GAVE_UP",
    "OK",
    "OUTCOMES",
    "RETRY",
    "TIMED_OUT",
    "Tally",
    "TaskObserver",
    "Telemetry",
    "task_line",
]

task_log = logging.getLogger("runqy.tasks")

# How an answered task ended (the ``outcome`` of its line and its counter label).
OK: Final = "ok"
#: Answered with an error and ``retry: false``.
FAILED: Final = "failed"
#: Answered with an error and ``retry: true`` (RetryableError or a retry_exceptions class).
RETRY: Final = "retry"
#: Its last attempt ran out of time.
TIMED_OUT: Final = "timed_out"
#: Its child process died under it, or was killed for memory or for another task's timeout.
CRASHED: Final = "crashed"
#: runqy gave up on it without a result: shutdown, or a broken runner.
GAVE_UP: Final = "gave_up"
OUTCOMES: Final = (OK, FAILED, RETRY, TIMED_OUT, CRASHED, GAVE_UP)

#: Upper bounds (seconds) of the duration histogram's buckets; a last bucket holds the rest.
DURATION_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: An error in a task line is its last line, cut to this: enough to say what happened.
_MAX_ERROR_CHARS: Final = 500


class TaskObserver:
    """What a runner tells about its tasks. This base ignores it all; :class:`Telemetry` counts and logs.

    ``thread`` is the name of the thread the attempt ran on, ``pid`` the process (a
    child's, or None for this one), ``duration_s`` None when it was not measured.
    """

    #: Runners time every attempt only when this is true.
    measures: bool = False

    def finished(
        self,
        request: TaskRequest,
        attempt: int,
        outcome: str,
        duration_s: float | None,
        thread: str,
        pid: int | None = None,
        error: str | None = None,
    ) -> None:
        """A task was answered; called once per task, just before its reply."""

    def retried(
        self,
        request: TaskRequest,
        attempt: int,
        outcome: str,
        duration_s: float | None,
        thread: str,
        pid: int | None = None,
        error: str | None = None,
    ) -> None:
        """An attempt failed with ``outcome`` and the task is tried again here."""

    def abandoned(self, request: TaskRequest, attempt: int, thread: str, timeout_s: float) -> None:
        """An attempt timed out and its thread, which cannot be stopped, was left running."""

    def child_restarted(self, cause: str) -> None:
        """A child process is replaced: ``crashed``, ``timeout``, ``memory``, ``max_tasks`` or ``abandoned_threads``."""

    def reply_dropped(self, task_id: str, *, late: bool) -> None:
        """A second answer for a task was dropped: ``late`` after shutdown gave up on it, else a runner bug."""

    def batch_called(self, tasks: int) -> None:
        """A batch handler is called with ``tasks`` tasks (called once per call, retries included)."""


@dataclass
class Tally:
    """Counts since start: by (task type, outcome), durations by type, local retries, child restarts."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Per task type: one count per bucket of DURATION_BUCKETS_S, and the overflow bucket last.
    buckets: dict[str, list[int]] = field(default_factory=dict)
    duration_sums_s: dict[str, float] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    abandoned: int = 0
    child_restarts: dict[str, int] = field(default_factory=dict)
    #: Answers dropped because the runner had answered their task already: 0 unless a runner is broken.
    duplicate_replies: int = 0
    #: Answers dropped because shutdown had given up on their task (answered it ``retry: true``).
    late_replies: int = 0
    #: Calls of a batch handler, and the tasks they carried (their ratio is the mean batch size).
    batch_calls: int = 0
    batched_tasks: int = 0

    def by_outcome(self) -> dict[str, int]:
        totals = dict.fromkeys(OUTCOMES, 0)
        for (_, outcome), count in self.counts.items():
            totals[outcome] = totals.get(outcome, 0) + count
        return totals

    @property
    def answered(self) -> int:
        return sum(self.counts.values())

    def merged_buckets(self) -> list[int]:
        """Every type's histogram added up."""
        merged = [0] * (len(DURATION_BUCKETS_S) + 1)
        for counts in self.buckets.values():
            merged = [a + b for a, b in zip(merged, counts, strict=True)]
        return merged

    def minus(self, earlier: Tally) -> Tally:
        """What happened since ``earlier`` (for the stats line's interval)."""
        zero = [0] * (len(DURATION_BUCKETS_S) + 1)
        buckets = {
            task_type: [a - b for a, b in zip(counts, earlier.buckets.get(task_type, zero), strict=True)]
            for task_type, counts in self.buckets.items()
        }
        return Tally(
            counts={key: n - earlier.counts.get(key, 0) for key, n in self.counts.items()},
            buckets=buckets,
            duration_sums_s={t: s - earlier.duration_sums_s.get(t, 0.0) for t, s in self.duration_sums_s.items()},
            retried={t: n - earlier.retried.get(t, 0) for t, n in self.retried.items()},
            abandoned=self.abandoned - earlier.abandoned,
            child_restarts={c: n - earlier.child_restarts.get(c, 0) for c, n in self.child_restarts.items()},
            duplicate_replies=self.duplicate_replies - earlier.duplicate_replies,
            late_replies=self.late_replies - earlier.late_replies,
            batch_calls=self.batch_calls - earlier.batch_calls,
            batched_tasks=self.batched_tasks - earlier.batched_tasks,
        )


def quantile_s(buckets: list[int], q: float) -> float | None:
    """Estimate a duration quantile from histogram counts, interpolating inside the bucket; None without data.

    Within a bucket durations are taken as evenly spread, so the estimate is off by at
    most the bucket's width; the overflow bucket answers with the largest bound.
    """
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index == len(DURATION_BUCKETS_S):
                return DURATION_BUCKETS_S[-1]
            low = DURATION_BUCKETS_S[index - 1] if index else 0.0
            return low + (DURATION_BUCKETS_S[index] - low) * (rank - seen) / count
        seen += count
    return DURATION_BUCKETS_S[-1]


class _Shard:
    """One thread's counts; only that thread writes them."""

    __slots__ = ("buckets", "counts", "sums")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def add(self, task_type: str, outcome: str, duration_s: float | None) -> None:
        key = (task_type, outcome)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if duration_s is not None:
            buckets = self.buckets.get(task_type)
            if buckets is None:
                buckets = self.buckets[task_type] = [0] * (len(DURATION_BUCKETS_S) + 1)
            buckets[bisect.bisect_left(DURATION_BUCKETS_S, duration_s)] += 1
            self.sums[task_type] = self.sums.get(task_type, 0.0) + duration_s


class Telemetry(TaskObserver):
    """Counts every answered task and logs a line for those that went wrong, were slow, or all of them.

    ``measure``: time every task (for the stats line and metrics). ``slow_task_s``: a
    task that ran at least this long gets a line. ``log_every_task``: a line for every
    task, also those that went well.
    """

    def __init__(
        self, *, measure: bool = False, slow_task_s: float | None = None, log_every_task: bool = False
    ) -> None:
        self.measures = measure or slow_task_s is not None or log_every_task
        self.slow_task_s = slow_task_s
        self.log_every_task = log_every_task
        self._slow_s = float("inf") if slow_task_s is None else slow_task_s
        self.started_at = time.monotonic()
        self._local = threading.local()
        self._shards: list[_Shard] = []
        # For the rare events only (a new thread's shard, retries, abandons, restarts, dropped replies).
        self._lock = threading.Lock()
        self._retried: collections.Counter[str] = collections.Counter()
        self._abandoned = 0
        self._restarts: collections.Counter[str] = collections.Counter()
        self._duplicate_replies = 0
        self._late_replies = 0
        self._batch_calls = 0
        self._batched_tasks = 0

    def finished(
        self,
        request: TaskRequest,
        attempt: int,
        outcome: str,
        duration_s: float | None,
        thread: str,
        pid: int | None = None,
        error: str | None = None,
    ) -> None:
        try:
            shard: _Shard = self._local.shard
        except AttributeError:
            shard = self._new_shard()
        shard.add(request.type, outcome, duration_s)
        if outcome != OK or self.log_every_task or (duration_s is not None and duration_s >= self._slow_s):
            level = logging.INFO if outcome == OK else logging.WARNING
            task_line(level, request, attempt, outcome, duration_s, thread, pid, error, self._slow_s)

    def retried(
        self,
        request: TaskRequest,
        attempt: int,
        outcome: str,
        duration_s: float | None,
        thread: str,
        pid: int | None = None,
        error: str | None = None,
    ) -> None:
        with self._lock:
            self._retried[request.type] += 1
        task_line(logging.INFO, request, attempt, f"{outcome}, retrying", duration_s, thread, pid, error)

    def abandoned(self, request: TaskRequest, attempt: int, thread: str, timeout_s: float) -> None:
        with self._lock:
            self._abandoned += 1
        why = f"timed out after {timeout_s:g}s; its thread cannot be stopped and is left running"
        task_line(logging.WARNING, request, attempt, "abandoned", timeout_s, thread, None, why)

    def child_restarted(self, cause: str) -> None:
        with self._lock:
            self._restarts[cause] += 1

    def reply_dropped(self, task_id: str, *, late: bool) -> None:
        with self._lock:
            if late:
                self._late_replies += 1
            else:
                self._duplicate_replies += 1

    def batch_called(self, tasks: int) -> None:
        # Once per call, not per task: the lock costs little beside a handler call.
        with self._lock:
            self._batch_calls += 1
            self._batched_tasks += tasks

    def tally(self) -> Tally:
        """The counts since start, summed over every thread's shard."""
        with self._lock:
            shards = list(self._shards)
            tally = Tally(
                retried=dict(self._retried),
                abandoned=self._abandoned,
                child_restarts=dict(self._restarts),
                duplicate_replies=self._duplicate_replies,
                late_replies=self._late_replies,
                batch_calls=self._batch_calls,
                batched_tasks=self._batched_tasks,
            )
        for shard in shards:
            # dict() and list() of a dict or list run in C without releasing the GIL: each
            # copy is consistent even while the shard's thread goes on counting.
            for key, count in dict(shard.counts).items():
                tally.counts[key] = tally.counts.get(key, 0) + count
            for task_type, buckets in dict(shard.buckets).items():
                mine = tally.buckets.setdefault(task_type, [0] * len(buckets))
                tally.buckets[task_type] = [a + b for a, b in zip(mine, list(buckets), strict=True)]
            for task_type, total in dict(shard.sums).items():
                tally.duration_sums_s[task_type] = tally.duration_sums_s.get(task_type, 0.0) + total
        return tally

    def _new_shard(self) -> _Shard:
        shard = self._local.shard = _Shard()
        with self._lock:
            self._shards.append(shard)
        return shard


def task_line(
    level: int,
    request: TaskRequest,
    attempt: int,
    outcome: str,
    duration_s: float | None,
    thread: str,
    pid: int | None,
    error: str | None,
    slow_s: float = float("inf"),
) -> None:
    """Log one task's line on ``runqy.tasks``; never its payload or result, which may hold user data."""
    if not task_log.isEnabledFor(level):
        return
    pid = os.getpid() if pid is None else pid
    took = "-" if duration_s is None else f"{duration_s * 1000:.1f} ms"
    slow = " (slow)" if outcome == OK and duration_s is not None and duration_s >= slow_s else ""
    summary = _last_line(error)
    message = f"task {request.task_id} type={request.type or '-'} attempt={attempt} {outcome}{slow} in {took}"
    message += f" on {thread} pid {pid}" + (f": {summary}" if summary else "")
    record = task_log.makeRecord(task_log.name, level, __file__, 0, message, (), None)
    # Set after the record is made, as the record factory fills the task attributes from
    # the running task (none, here) and logging refuses an ``extra`` that overwrites them.
    record.runqy_task_id = request.task_id
    record.runqy_task_type = request.type
    record.runqy_attempt = attempt
    record.runqy_event = "task"
    record.runqy_fields = {
        "outcome": outcome,
        "duration_s": None if duration_s is None else round(duration_s, 6),
        "thread": thread,
        "pid": pid,
        "error": summary or None,
    }
    task_log.handle(record)


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    last = lines[-1] if lines else ""
    return last if len(last) <= _MAX_ERROR_CHARS else last[:_MAX_ERROR_CHARS] + " [clipped]"
