"""Prometheus metrics on ``/metrics``, read from the counts at scrape time (``metrics_port``).

Nothing is counted for Prometheus on the hot path: a collector turns the
:class:`~runqy.observe.telemetry.Telemetry` tally and the runner's gauges into metric
families when a scraper asks. The process and hybrid runners count their children's
tasks in the parent, from the answers it receives anyway, so one endpoint sees all
of them and no multiprocess directory is needed. Needs the ``metrics`` extra
(``pip install 'runqy[metrics]'``), imported only when ``metrics_port`` is set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from runqy.errors import RunqyError
from runqy.observe.report import WorkerStats
from runqy.observe.telemetry import DURATION_BUCKETS_S, Telemetry

__all__ = ["MetricsServer", "MetricsUnavailable"]

log = logging.getLogger("runqy")


class MetricsUnavailable(RunqyError):
    """Raised when ``metrics_port`` is set but the metrics endpoint cannot start (no prometheus-client, port in use)."""


class _Collector:
    """Builds every runqy metric family from the current counts and gauges, on each scrape."""

    def __init__(self, telemetry: Telemetry, stats: Callable[[], WorkerStats]) -> None:
        self._telemetry = telemetry
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        tally = self._telemetry.tally()
        now = self._stats()
        tasks = CounterMetricFamily("runqy_tasks", "Tasks answered, by type and outcome.", labels=["type", "outcome"])
        for (task_type, outcome), count in sorted(tally.counts.items()):
            tasks.add_metric([task_type, outcome], count)
        yield tasks
        retries = CounterMetricFamily("runqy_task_retries", "Attempts failed and retried here.", labels=["type"])
        for task_type, count in sorted(tally.retried.items()):
            retries.add_metric([task_type], count)
        yield retries
        durations = HistogramMetricFamily(
            "runqy_task_duration_seconds", "How long the last attempt of each answered task ran.", labels=["type"]
        )
        bounds = [str(b) for b in DURATION_BUCKETS_S] + ["+Inf"]
        for task_type, counts in sorted(tally.buckets.items()):
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, running))
            durations.add_metric([task_type], cumulative, tally.duration_sums_s.get(task_type, 0.0))
        yield durations
        # The metrics of one value each: family, name, help, value.
        single = (
            (GaugeMetricFamily, "runqy_tasks_in_flight", "Tasks accepted and not answered yet.", now.in_flight),
            (GaugeMetricFamily, "runqy_runner_capacity", "Tasks the runner runs at once.", now.capacity),
            (
                GaugeMetricFamily,
                "runqy_abandoned_threads",
                "Timed-out attempts still running in threads.",
                now.abandoned_threads,
            ),
            (
                CounterMetricFamily,
                "runqy_threads_abandoned",
                "Threads abandoned after their attempt timed out.",
                tally.abandoned,
            ),
            (
                CounterMetricFamily,
                "runqy_duplicate_replies",
                "Second answers the runner gave for a task, dropped: a runner bug.",
                tally.duplicate_replies,
            ),
            (
                CounterMetricFamily,
                "runqy_late_replies",
                "Answers after shutdown gave up on their task, dropped.",
                tally.late_replies,
            ),
            (
                CounterMetricFamily,
                "runqy_batch_calls",
                "Calls of a batch handler (tasks per call: batch_tasks / batch_calls).",
                tally.batch_calls,
            ),
            (CounterMetricFamily, "runqy_batch_tasks", "Tasks carried by batch handler calls.", tally.batched_tasks),
        )
        for family, name, text, value in single:
            yield family(name, text, value=value)
        restarts = CounterMetricFamily("runqy_child_restarts", "Child processes replaced, by cause.", labels=["cause"])
        for cause, count in sorted(tally.child_restarts.items()):
            restarts.add_metric([cause], count)
        yield restarts
        rss = GaugeMetricFamily(
            "runqy_child_rss_bytes", "Resident memory of each child process with its descendants.", labels=["pid"]
        )
        for pid, size in sorted(now.child_rss_bytes.items()):
            rss.add_metric([str(pid)], size)
        yield rss


class MetricsServer:
    """Serves ``/metrics`` over HTTP on ``address:port`` (port 0: any free port) until :meth:`close`."""

    def __init__(self, telemetry: Telemetry, stats: Callable[[], WorkerStats]) -> None:
        self._collector = _Collector(telemetry, stats)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        #: The port it listens on, once started.
        self.port = 0

    def start(self, address: str, port: int) -> None:
        """Listen and serve in a daemon thread; raises :class:`MetricsUnavailable` saying why it cannot."""
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise MetricsUnavailable(
                "metrics_port is set but prometheus-client is not installed: pip install 'runqy[metrics]'"
            ) from None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._collector)
        try:
            self._server, self._thread = start_http_server(port, address, registry=registry)
        except OSError as exc:
            raise MetricsUnavailable(
                f"metrics_port={port}: cannot listen on {address}:{port} ({exc.strerror or exc}); "
                "choose a free port, or 0 for any free one"
            ) from exc
        self.port = int(self._server.server_port)
        log.info("metrics: serving http://%s:%d/metrics", address, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
