"""What a local run measured: one :class:`Outcome` per task and the :class:`RunSummary` of a run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATUSES", "Outcome", "RunSummary", "percentile"]

#: Every status an outcome can have, in the order summaries list them.
STATUSES = ("ok", "failed", "retryable", "lost")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request and what became of it; times are ``time.perf_counter()`` readings of the driver."""

    request: dict[str, Any]
    response: dict[str, Any] | None
    sent_at: float
    answered_at: float

    @property
    def latency_s(self) -> float:
        """From writing the request to reading its response (or to giving up on it)."""
        return self.answered_at - self.sent_at

    @property
    def status(self) -> str:
        """``ok``, ``failed``, ``retryable`` or ``lost`` (no answer before the worker stopped or the deadline)."""
        if self.response is None:
            return "lost"
        if not self.response.get("error"):
            return "ok"
        return "retryable" if self.response.get("retry") else "failed"


def percentile(sorted_values: list[float], percent: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(len(sorted_values) * percent / 100 + 0.5) - 1))
    return sorted_values[rank]


@dataclass
class RunSummary:
    """Counts, throughput and latency of a run, built one outcome at a time (outcomes are not kept)."""

    counts: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    exit_code: int | None = None

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        if outcome.response is not None:
            self.latencies_s.append(outcome.latency_s)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def count(self, status: str) -> int:
        return self.counts[status]

    def latency_percentile_s(self, percent: float) -> float:
        """Latency of answered tasks at ``percent`` (50 for the median)."""
        self.latencies_s.sort()
        return percentile(self.latencies_s, percent)

    @property
    def tasks_per_s(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        """One line: counts, throughput, p50/p99 latency and the worker's exit code."""
        counts = " ".join(f"{status}={self.counts[status]}" for status in STATUSES)
        return (
            f"{self.total} tasks in {self.elapsed_s:.2f}s ({self.tasks_per_s:.1f}/s): {counts}; "
            f"latency p50={self.latency_percentile_s(50) * 1000:.1f}ms "
            f"p99={self.latency_percentile_s(99) * 1000:.1f}ms; worker exit code {self.exit_code}"
        )
