"""The Worker facade and the runqy-python compatible ``run()`` / ``run_once()``."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from runqy.app import Registry, default_registry
from runqy.errors import HandlerNotRegistered, HandlerUnsupported, LoadFailed, TaskFailed
from runqy.observe.logs import configure_logging, install_task_records
from runqy.observe.telemetry import Telemetry
from runqy.protocol import ProtocolChannel, TaskRequest, TaskResponse, error_status_line, prepare_parser
from runqy.runners.base import Runner

if TYPE_CHECKING:
    from runqy.config.settings import RunqySettings
    from runqy.observe.report import WorkerStats
    from runqy.serve import Server

__all__ = ["Worker", "run", "run_once"]

log = logging.getLogger("runqy")

# Claimed once per process: a second claim would hand the protocol to stderr.
_channel: ProtocolChannel | None = None
_served = False


def served_in_this_process() -> bool:
    """True once a worker served in this process (a script may call ``run()`` while being imported)."""
    return _served


class Worker:
    """A handler registry served by the runner its settings choose; start it with :meth:`run`.

    The runner is built and started once (``@load`` runs then) and reused by every
    later :meth:`run`, :meth:`run_once` and :meth:`map`, until :meth:`close`. A worker
    is a context manager that closes its runner::

        with Worker(load_settings(python_workers=8), registry) as worker:
            results = worker.map(payloads)
    """

    def __init__(self, settings: RunqySettings | None = None, registry: Registry | None = None) -> None:
        self.settings = settings or load_settings()
        self.registry = registry or default_registry
        self._runner: Runner | None = None
        self._server: Server | None = None
        settings = self.settings
        #: What became of every task; read by :meth:`stats`, the stats line and the metrics.
        self.telemetry = Telemetry(
            measure=settings.stats_interval_s is not None or settings.metrics_port is not None,
            slow_task_s=settings.slow_task_s,
            log_every_task=settings.log_every_task,
        )

    @property
    def runner(self) -> Runner:
        """The started runner (starting it, and so running ``@load``, on first use)."""
        if self._runner is None:
            install_task_records()
            runner = self.settings.build_runner()
            runner.telemetry = self.telemetry
            runner.start(self._configured_registry())
            self._runner = runner
        return self._runner

    def _configured_registry(self) -> Registry:
        # The batch settings fill in what @task(batch_size=..., max_wait_ms=...) left unset: code wins.
        return self.registry.with_batch_defaults(self.settings.batch_size, self.settings.batch_max_wait_ms)

    def run(self) -> None:
        """Serve tasks from stdin until it closes or a signal arrives (long-running mode)."""
        self._serve(one_shot=False)

    def run_once(self) -> None:
        """Serve exactly one task, then return (one-shot mode)."""
        self._serve(one_shot=True)

    def _serve(self, *, one_shot: bool) -> None:
        # Imported here: a child process of the process runner imports this module (through the
        # worker's ``from runqy import run``) but never serves.
        from runqy.observe.prometheus import MetricsServer, MetricsUnavailable
        from runqy.observe.report import StatsReporter
        from runqy.serve import Server

        global _served
        _served = True
        if not one_shot:
            # Beside @load and the runner's start, not before the ready line nor on the first request.
            # Not a daemon: an import cut short by the interpreter's exit aborts the process.
            threading.Thread(target=prepare_parser, name="runqy-prepare-parser").start()
        settings = self.settings
        configure_logging(settings.log_level, settings.log_format)
        channel = _claim_channel()
        metrics = MetricsServer(self.telemetry, self.stats)
        try:
            if settings.metrics_port is not None:  # before the runner: a port in use fails start-up at once
                metrics.start(settings.metrics_address, settings.metrics_port)
            runner = self.runner
        except (HandlerNotRegistered, HandlerUnsupported, LoadFailed, MetricsUnavailable) as exc:
            log.error("%s", exc, exc_info=isinstance(exc, LoadFailed))
            channel.send(error_status_line(str(exc)))
            _exit_now(channel, 1)
        server = Server(
            runner,
            channel,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            one_shot=one_shot,
            spin_wait_s=settings.spin_wait_us / 1e6,
        )
        self._server = server
        reporter = None
        if settings.stats_interval_s is not None:
            reporter = StatsReporter(self.telemetry, runner, server.inflight.__len__, settings.stats_interval_s)
            reporter.start()
        try:
            code = server.serve()
        finally:
            if reporter is not None:
                reporter.stop()
            metrics.close()
        stuck = runner.abandoned_attempts
        if code != 0 or stuck or not server.drained:
            if stuck:
                log.warning("exiting with %d timed-out attempt(s) still running in abandoned threads", stuck)
            # Interpreter shutdown would wait for threads that may never end.
            _exit_now(channel, code)

    def map(self, payloads: Iterable[Any], *, return_exceptions: bool = False) -> list[Any]:
        """Run the handler over ``payloads`` on this worker's runner; returns the results in input order.

        Each payload is one task, with the configured timeout and local retries, and as
        many run at once as the runner allows. Results are the handler's return values
        as they are (not encoded to JSON). The first call starts the runner (``@load``
        runs then); later calls, and :meth:`run`, reuse it.

        A failed task raises :class:`~runqy.errors.TaskFailed` for the first failed
        payload in input order, once the tasks already started have finished; no
        further payload is started after a failure is seen. With
        ``return_exceptions=True`` every payload runs and a failed one's place in the
        list holds its ``TaskFailed`` instead.
        """
        batch = self._configured_registry().batch_spec()
        return _map(self.runner, payloads, return_exceptions, batch.size if batch is not None else 1)

    def stats(self) -> WorkerStats:
        """The worker's figures since it was created: tasks by outcome, durations, and the runner's gauges now."""
        from runqy.observe.report import collect_stats

        in_flight = len(self._server.inflight) if self._server is not None else 0
        period_s = time.monotonic() - self.telemetry.started_at
        return collect_stats(self.telemetry.tally(), period_s, self._runner, in_flight)

    def close(self) -> None:
        """Close the runner (finishing what it runs) and release its threads or processes; the next use restarts it."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Worker runner={self.settings.runner_name!r}>"


def run(*, workers: int | None = None, **settings: Any) -> None:
    """Serve the ``@task`` handler over stdin/stdout, as runqy-python's ``run()`` does.

    ``workers=N`` (N > 1) runs N tasks at once on threads; any other keyword is a
    :class:`RunqySettings` field and wins over the environment and TOML files.
    """
    if workers is not None:
        settings["python_workers"] = workers
    if _is_runqy_child():
        return  # imported again inside a runner's child process: the parent serves
    with Worker(load_settings(**settings)) as worker:
        worker.run()


def run_once(**settings: Any) -> None:
    """Serve exactly one task, as runqy-python's ``run_once()`` does."""
    if _is_runqy_child():
        return
    with Worker(load_settings(**settings)) as worker:
        worker.run_once()


def _map(runner: Runner, payloads: Iterable[Any], return_exceptions: bool, batch_size: int) -> list[Any]:
    # Twice the capacity (in batches) in flight: enough that no slot idles between
    # calls, few enough that a long or endless iterable is not read ahead.
    limit = 2 * runner.capacity * batch_size
    responses: list[TaskResponse | None] = []
    changed = threading.Condition()
    outstanding = 0
    failed = False

    def answer(index: int, response: TaskResponse) -> None:
        nonlocal outstanding, failed
        with changed:
            responses[index] = response
            failed = failed or response.error is not None
            outstanding -= 1
            changed.notify()

    def has_room() -> bool:
        return outstanding < limit

    for index, payload in enumerate(payloads):
        with changed:
            changed.wait_for(has_room)
            if failed and not return_exceptions:
                break
            outstanding += 1
            responses.append(None)
        try:
            runner.submit(TaskRequest(f"map-{index}", payload), partial(answer, index))
        except BaseException:
            with changed:  # never submitted: not waited for
                outstanding -= 1
            raise
    with changed:
        changed.wait_for(lambda: outstanding == 0)
    results: list[Any] = []
    for index, response in enumerate(responses):
        assert response is not None
        if response.error is None:
            results.append(response.result)
        elif return_exceptions:
            results.append(TaskFailed(index, response))
        else:
            raise TaskFailed(index, response)
    return results


def _is_runqy_child() -> bool:
    return os.environ.get("RUNQY_CHILD_PROCESS") == "1"


def _claim_channel() -> ProtocolChannel:
    global _channel
    if _channel is None:
        _channel = ProtocolChannel.claim_stdout()
    return _channel


def _exit_now(channel: ProtocolChannel, code: int) -> None:
    channel.flush()
    sys.stderr.flush()
    os._exit(code)


def load_settings(**overrides: Any) -> RunqySettings:
    """:func:`runqy.config.resolve.load_settings`, imported when first needed.

    A child process of the process runner imports this module (through the worker's
    ``from runqy import run``) but never serves, so it never pays for the settings machinery.
    """
    from runqy.config.resolve import load_settings as resolve

    return resolve(**overrides)
