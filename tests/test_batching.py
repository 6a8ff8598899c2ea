"""Batch handlers in code: settings precedence, Worker.map, async handlers, and how long a short batch waits."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from runqy import Registry, RetryableError, RunqyError, Worker, current_batch, load_settings
from runqy.attempts import RetryPolicy
from runqy.batching import BatchSpec
from runqy.protocol import TaskRequest, TaskResponse
from runqy.runners.sequential import SequentialRunner
from runqy.runners.thread import PooledRunner, ThreadRunner


def sizes_registry(**batch: Any) -> Registry:
    registry = Registry()

    @registry.task(**batch)
    def handle(payloads: list[int]) -> list[dict[str, int]]:
        return [{"n": n, "call": len(payloads)} for n in payloads]

    return registry


def test_a_handler_without_batch_size_takes_one_payload_as_before() -> None:
    registry = Registry()
    registry.task(lambda payload: payload * 2)
    with Worker(load_settings(python_workers=4), registry) as worker:
        assert worker.map(range(10)) == [n * 2 for n in range(10)]


def test_map_runs_a_batch_handler_with_results_in_input_order() -> None:
    with Worker(load_settings(python_workers=2), sizes_registry(batch_size=16)) as worker:
        results = worker.map(range(200))
    assert [r["n"] for r in results] == list(range(200))
    assert max(r["call"] for r in results) > 1 and all(r["call"] <= 16 for r in results)


def test_the_batch_size_setting_applies_where_the_decorator_sets_none_and_code_wins() -> None:
    registry = Registry()

    @registry.task
    def handle(payloads: list[int]) -> list[int]:
        assert isinstance(payloads, list)
        return [len(payloads)] * len(payloads)

    with Worker(load_settings(batch_size=4), registry) as worker:
        assert max(worker.map(range(40))) <= 4
    with Worker(load_settings(batch_size=4), sizes_registry(batch_size=2)) as worker:
        assert max(r["call"] for r in worker.map(range(40))) <= 2


def test_async_batch_handlers_get_their_batch() -> None:
    registry = Registry()

    @registry.task(batch_size=8)
    async def handle(payloads: list[int]) -> list[Any]:
        await asyncio.sleep(0)
        ids = [info.task_id for info in current_batch()]
        return [{"n": n, "id": task_id} for n, task_id in zip(payloads, ids, strict=True)]

    with Worker(load_settings(python_workers=2), registry) as worker:
        results = worker.map(range(30))
    assert [r["n"] for r in results] == list(range(30))
    assert [r["id"] for r in results] == [f"map-{n}" for n in range(30)]


def test_current_batch_outside_a_batch_handler_says_where_it_works() -> None:
    with pytest.raises(RunqyError, match="only available while a batch handler"):
        current_batch()


def test_bad_batch_values_fail_where_they_are_written() -> None:
    with pytest.raises(ValueError, match="batch_size=0: expected an integer of 1 or more"):
        Registry().task(batch_size=0)(lambda payloads: payloads)
    with pytest.raises(ValueError, match="max_wait_ms=-1: expected 0 or more"):
        Registry().task(batch_size=2, max_wait_ms=-1)(lambda payloads: payloads)


def test_a_short_batch_waits_for_more_at_most_max_wait() -> None:
    spec = BatchSpec(size=8, max_wait_s=0.2)
    assert spec.take_now(waiting=8, oldest_arrived=0.0, now=0.0) == 8
    assert spec.take_now(waiting=3, oldest_arrived=10.0, now=10.1) == 0
    assert spec.take_now(waiting=3, oldest_arrived=10.0, now=10.2) == 3
    registry = sizes_registry(batch_size=8, max_wait_ms=200)
    runner = ThreadRunner(max_threads=1)
    runner.start(registry)
    try:
        answered = threading.Event()
        started = time.monotonic()
        runner.submit(TaskRequest("alone", 1), lambda response: answered.set())
        assert answered.wait(5.0)
        waited_s = time.monotonic() - started
        assert 0.2 <= waited_s < 2.0, "a lone task waits max_wait_ms for company, and no longer"
    finally:
        runner.close(5.0)


@pytest.mark.parametrize(
    ("failure", "timeout_s"),
    [("retryable", None), ("retryable", 30.0), ("timed out", 0.3)],
    ids=["retryable-untimed", "retryable-timed", "timed-out"],
)
@pytest.mark.parametrize("runner_class", [SequentialRunner, ThreadRunner])
def test_a_retried_task_joins_the_batch_that_forms_next(
    runner_class: type[PooledRunner], failure: str, timeout_s: float | None
) -> None:
    calls: list[list[tuple[str, int]]] = []
    first_call_running, release_first_call, all_answered = threading.Event(), threading.Event(), threading.Event()
    registry = Registry()

    @registry.task(batch_size=8)
    def handle(payloads: list[int]) -> list[Any]:
        calls.append([(info.task_id, info.attempt) for info in current_batch()])
        if len(calls) == 1:
            first_call_running.set()
            if failure == "timed out":  # stuck past its timeout: abandoned, its tasks retried meanwhile
                assert all_answered.wait(10.0)
            assert release_first_call.wait(10.0)
            return [RetryableError("busy")] * len(payloads)
        return payloads

    policy = RetryPolicy(max_retries=1, task_timeout_s=timeout_s)
    runner = SequentialRunner(policy) if runner_class is SequentialRunner else ThreadRunner(1, policy)
    runner.start(registry)
    answers: dict[str, TaskResponse] = {}

    def reply(response: TaskResponse) -> None:
        answers[response.task_id] = response
        if len(answers) == 4:
            all_answered.set()

    try:
        runner.submit(TaskRequest("a", 0), reply)
        assert first_call_running.wait(10.0)
        for n in (1, 2, 3):  # arrive while the first call runs
            runner.submit(TaskRequest(f"b{n}", n), reply)
        if failure == "retryable":
            release_first_call.set()
        assert all_answered.wait(10.0)
    finally:
        release_first_call.set()
        runner.close(5.0)
    assert calls == [[("a", 1)], [("b1", 1), ("b2", 1), ("b3", 1), ("a", 2)]], (
        "the retry waits its turn with the others"
    )
    assert {task_id: response.result for task_id, response in answers.items()} == {"a": 0, "b1": 1, "b2": 2, "b3": 3}
