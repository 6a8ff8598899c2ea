"""Worker.map: the handler over payloads in code, results in order, failures as TaskFailed (on every runner)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RUNNERS, WorkerFactory, behaviours_registry

from runqy.config.resolve import load_settings
from runqy.config.settings import RunqySettings
from runqy.errors import TaskFailed
from runqy.worker import Worker


def settings_of(runner_name: str, monkeypatch: pytest.MonkeyPatch) -> RunqySettings:
    """The settings that select the runner under test, as its environment would."""
    for name, value in RUNNERS[runner_name].items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_results_come_in_input_order(runner_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Later payloads finish first where tasks run at once: the list must still follow the input.
    payloads = [{"op": "work", "seconds": 0.01 * (8 - n), "n": n} for n in range(8)]
    with Worker(settings_of(runner_name, monkeypatch), behaviours_registry(runner_name)) as worker:
        results = worker.map(payloads)
    assert results == [{"worked_s": p["seconds"]} for p in payloads]


def test_a_failure_raises_for_the_first_failed_payload_and_stops_reading() -> None:
    consumed = 0

    def payloads() -> Iterator[dict[str, Any]]:
        nonlocal consumed
        for n in range(1000):
            consumed += 1
            yield {"op": "fail", "message": "no"} if n in (1, 2) else {"op": "echo"}

    with Worker(load_settings(), behaviours_registry()) as worker, pytest.raises(TaskFailed) as failure:
        worker.map(payloads())
    assert failure.value.index == 1
    assert "ValueError: no" in (failure.value.response.error or "")
    assert failure.value.retryable is False
    assert consumed < 10


def test_return_exceptions_keeps_failures_in_place(runner_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = [{"op": "echo", "n": 0}, {"op": "retryable", "message": "later"}, {"op": "echo", "n": 2}]
    with Worker(settings_of(runner_name, monkeypatch), behaviours_registry(runner_name)) as worker:
        results = worker.map(payloads, return_exceptions=True)
    assert results[0] == payloads[0] and results[2] == payloads[2]
    assert isinstance(results[1], TaskFailed) and results[1].retryable and results[1].response.error == "later"


def test_timeouts_and_retries_apply_to_map() -> None:
    settings = load_settings(python_workers=2, task_timeout_s=0.2, max_retries=1, retry_backoff_s=0)
    with Worker(settings, behaviours_registry()) as worker:
        assert worker.map([{"op": "stuck_first", "seconds": 2}]) == [{"attempt": 2}]


def test_closing_the_worker_releases_the_runner_and_the_next_use_starts_again() -> None:
    worker = Worker(load_settings(python_workers=2), behaviours_registry())
    with worker:
        (first,) = worker.map([{"op": "context"}])
    assert worker._runner is None
    with worker:
        (second,) = worker.map([{"op": "context"}])
    assert first["token"] != second["token"]


def test_empty_input_gives_an_empty_list() -> None:
    with Worker(load_settings(), behaviours_registry()) as worker:
        assert worker.map([]) == []


def test_run_once_and_map_called_again_reuse_the_started_runner(
    write_worker: Callable[[str], Path], start_worker: WorkerFactory
) -> None:
    script = write_worker(
        """
        import sys, uuid
        from runqy import Worker, load, load_settings, task

        @load
        def setup():
            return uuid.uuid4().hex

        @task
        def handle(payload, ctx):
            return ctx

        with Worker(load_settings(python_workers=2)) as worker:
            worker.run_once()
            worker.run_once()
            print("map", worker.map([None])[0], file=sys.stderr, flush=True)
        """
    )
    worker = start_worker(script)
    first = worker.call(None, timeout_s=10)["result"]
    second = worker.call(None, timeout_s=10)["result"]
    assert worker.wait(10) == 0
    assert first == second
    assert f"map {first}" in worker.stderr_lines
