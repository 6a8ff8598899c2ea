"""The attempt engine: backoff, timeout messages, a retry (on a fresh pool thread) that never waits for a stuck one."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from harness import WAIT_S, Replies, wait_until

from runqy.app import Registry
from runqy.attempts import AttemptEngine, RetryPolicy
from runqy.context import current_task
from runqy.errors import TaskTimeout
from runqy.protocol import TaskRequest
from runqy.runners.thread import ThreadPool


@pytest.mark.parametrize("failed_attempt", [1, 2, 3, 4])
def test_backoff_doubles_with_jitter(failed_attempt: int) -> None:
    policy = RetryPolicy(retry_backoff_s=0.1)
    ceiling = 0.1 * 2 ** (failed_attempt - 1)
    delays = {policy.backoff_s(failed_attempt) for _ in range(50)}
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(delays) > 1, "no jitter"


def test_timeout_error_names_the_limit_and_the_attempt() -> None:
    error = TaskTimeout(2.5, 3)
    assert "attempt 3" in str(error) and "task_timeout_s=2.5" in str(error)
    assert isinstance(error, TimeoutError)


def test_retry_of_a_stuck_attempt_runs_on_a_fresh_pool_thread() -> None:
    release = threading.Event()
    ran_on: dict[tuple[str, int], int] = {}
    registry = Registry()

    @registry.task
    def handler(payload: Any) -> int:
        info = current_task()
        ran_on[info.task_id, info.attempt] = threading.get_ident()
        if info.attempt == 1 and payload == "stuck once":
            release.wait(WAIT_S)  # stuck until the test lets it go
        return info.attempt

    # A pool of one thread: the retry can only run if the pool hands the task to a fresh thread.
    pool = ThreadPool(registry.bind(), RetryPolicy(task_timeout_s=0.2, max_retries=1), max_threads=1)
    replies = Replies()
    pool.submit(TaskRequest("t", "stuck once"), replies.reply_for("t"))
    try:
        assert replies.one("t").result == 2
        stuck, fresh = ran_on["t", 1], ran_on["t", 2]
        assert stuck != fresh
        assert pool.engine.abandoned == 1
    finally:
        release.set()
    wait_until(lambda: pool.engine.abandoned == 0, "the abandoned attempt returned")
    # Once its handler returned, the abandoned thread stops: the next task runs on the fresh one.
    pool.submit(TaskRequest("next", None), replies.reply_for("next"))
    assert replies.one("next").result == 1 and ran_on["next", 1] == fresh
    assert pool.close(WAIT_S)
    assert replies.one("t").result == 2, "the late first attempt must not answer again"


def test_a_timeout_that_never_fires_changes_nothing() -> None:
    registry = Registry()
    registry.task(lambda payload: payload)
    handed_over: list[threading.Thread] = []
    engine = AttemptEngine(
        registry.bind(), RetryPolicy(task_timeout_s=30), lambda thread, rest: handed_over.append(thread)
    )
    replies = Replies()
    for n in range(100):
        assert engine.run(TaskRequest(f"t{n}", n), replies.reply_for(f"t{n}")) is True
    assert [replies.one(f"t{n}").result for n in range(100)] == list(range(100))
    assert engine.abandoned == 0 and handed_over == []
    engine.close()


def test_exceptions_named_in_settings_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from runqy.config.resolve import load_settings

    registry = Registry()

    @registry.task
    def handler(payload: Any) -> int:
        attempt = current_task().attempt
        if attempt == 1:
            raise ConnectionError("database went away")
        if payload == "twice":
            raise ConnectionError("still away")
        return attempt

    monkeypatch.setenv("RUNQY_RETRY_EXCEPTIONS", '["ConnectionError", "runqy.errors.TaskTimeout"]')
    runner = load_settings(max_retries=1, retry_backoff_s=0).build_runner()
    with runner:
        runner.start(registry)
        assert runner.run_task(TaskRequest("once", None)).result == 2
        given_up = runner.run_task(TaskRequest("twice", "twice"))
        assert given_up.retry is True and "ConnectionError: still away" in (given_up.error or "")


@pytest.mark.parametrize("name", ["NoSuchError", "no_such_module.Error", "runqy.config.settings.RunqySettings"])
def test_an_unknown_retry_exception_is_a_config_error(name: str) -> None:
    from runqy.config.resolve import load_settings
    from runqy.errors import ConfigError

    with pytest.raises(ConfigError, match="retry_exceptions"):
        load_settings(retry_exceptions=[name])


def test_a_timeout_is_answered_even_when_no_thread_can_take_over() -> None:
    release = threading.Event()
    registry = Registry()
    registry.task(lambda payload: release.wait(WAIT_S))

    def refuse(abandoned: threading.Thread, continuation: object) -> None:
        raise RuntimeError("can't start new thread")

    engine = AttemptEngine(registry.bind(), RetryPolicy(task_timeout_s=0.2, max_retries=3), on_abandon=refuse)
    replies = Replies()
    caller = threading.Thread(target=engine.run, args=(TaskRequest("t", None), replies.reply_for("t")))
    caller.start()
    try:
        assert "timed out" in (replies.one("t").error or "")
    finally:
        release.set()
    caller.join(WAIT_S)
    assert len(replies.responses["t"]) == 1
    engine.close()
