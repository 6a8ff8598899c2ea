"""What the thread runner promises beyond the contract: selection, sizing, reuse, abandoned threads, async."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from conftest import behaviours_registry
from harness import WAIT_S, Replies, wait_until

from runqy.app import Registry
from runqy.attempts import RetryPolicy
from runqy.config.resolve import load_settings
from runqy.context import current_task
from runqy.protocol import TaskRequest
from runqy.runners.sequential import SequentialRunner
from runqy.runners.thread import ThreadRunner, default_max_threads
from runqy.worker import Worker


@pytest.mark.parametrize(
    ("settings", "runner_cls", "capacity"),
    [
        ({}, SequentialRunner, 1),
        ({"python_workers": 1}, SequentialRunner, 1),
        ({"python_workers": 8}, ThreadRunner, 8),
        ({"runner_cls": "thread"}, ThreadRunner, default_max_threads()),
        ({"runner_cls": "ThreadRunner", "python_workers": 3}, ThreadRunner, 3),
        ({"runner_cls": "thread", "runner": {"max_threads": 2}}, ThreadRunner, 2),
    ],
)
def test_settings_select_and_size_the_runner(settings: dict[str, Any], runner_cls: type, capacity: int) -> None:
    runner = load_settings(**settings).build_runner()
    assert type(runner) is runner_cls
    assert runner.capacity == capacity


def test_environment_selects_the_thread_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_PYTHON_WORKERS", "32")
    assert load_settings().build_runner().capacity == 32


def test_default_size_is_cpu_count_plus_four_up_to_32() -> None:
    import os

    assert default_max_threads() == min(32, (os.cpu_count() or 1) + 4)


def test_trivial_tasks_stay_on_one_thread() -> None:
    with ThreadRunner(8) as runner:
        runner.start(behaviours_registry())
        threads = {runner.run_task(TaskRequest(f"t{n}", {"op": "context"})).result["thread"] for n in range(50)}
    assert len(threads) == 1, "tasks that never overlap must not start more threads"


def test_worker_reuses_its_started_runner_until_closed() -> None:
    with Worker(load_settings(python_workers=4), behaviours_registry()) as worker:
        first = worker.map([{"op": "context"}] * 8)
        runner = worker.runner
        second = worker.map([{"op": "context"}] * 8)
        assert worker.runner is runner
        assert len({r["token"] for r in first + second}) == 1, "@load ran again"
        assert len({r["thread"] for r in first + second}) <= 4
    assert worker._runner is None


def test_abandoned_threads_are_counted_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    saw_cancel = threading.Event()
    registry = Registry()

    @registry.task
    def cooperative(payload: Any) -> str:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:  # stands for long work that checks for cancellation
            if current_task().cancelled:
                saw_cancel.set()
                return "stopped"
            time.sleep(0.005)
        return "never cancelled"

    policy = RetryPolicy(task_timeout_s=0.2, max_abandoned_threads=0)
    with caplog.at_level(logging.WARNING, "runqy"), ThreadRunner(2, policy) as runner:
        runner.start(registry)
        response = runner.run_task(TaskRequest("slow", None))
        assert "timed out" in (response.error or "")
        assert saw_cancel.wait(WAIT_S), "the handler never saw current_task().cancelled"
        wait_until(lambda: runner.abandoned_attempts == 0, "the abandoned attempt finished")
    assert "max_abandoned_threads=0" in caplog.text


def test_async_handlers_share_one_loop_and_run_concurrently() -> None:
    registry = Registry()
    arrived: list[asyncio.AbstractEventLoop] = []
    parties = 4

    @registry.task
    async def meet(payload: Any) -> int:
        arrived.append(asyncio.get_running_loop())

        async def everyone_arrived() -> None:
            while len(arrived) < parties:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(everyone_arrived(), WAIT_S)
        return len(arrived)

    with ThreadRunner(parties) as runner:
        runner.start(registry)
        replies = Replies()
        for n in range(parties):
            replies.submit(runner, f"t{n}", None)
        assert [replies.one(f"t{n}").result for n in range(parties)] == [parties] * parties
    assert len(set(arrived)) == 1


def test_async_timeout_cancels_the_coroutine() -> None:
    registry = Registry()
    cancelled = threading.Event()

    @registry.task
    async def slow(payload: Any) -> None:
        try:
            await asyncio.sleep(WAIT_S)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with ThreadRunner(2, RetryPolicy(task_timeout_s=0.2)) as runner:
        runner.start(registry)
        response = runner.run_task(TaskRequest("slow", None))
        assert "attempt 1" in (response.error or "") and response.retry is True
        assert cancelled.wait(WAIT_S)


def test_a_failing_reply_callback_costs_no_thread(caplog: pytest.LogCaptureFixture) -> None:
    def broken(response: object) -> None:
        raise RuntimeError("reply failed")

    with ThreadRunner(1) as runner:
        runner.start(behaviours_registry())
        runner.submit(TaskRequest("lost", {"op": "echo"}), broken)
        assert runner.run_task(TaskRequest("next", {"op": "echo", "n": 2})).result == {"op": "echo", "n": 2}
    assert "reply failed" in caplog.text


def test_the_pool_runs_a_task_from_a_given_attempt_on() -> None:
    # The seam a hybrid child uses: attempt N of a task whose earlier attempts ran elsewhere.
    from runqy.runners.thread import ThreadPool

    pool = ThreadPool(behaviours_registry().bind(), RetryPolicy(), max_threads=2)
    replies = Replies()
    pool.submit(TaskRequest("t", {"op": "context"}), replies.reply_for("t"), attempt=3)
    assert replies.one("t").result["attempt"] == 3
    assert pool.close(WAIT_S)
