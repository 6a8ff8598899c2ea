"""The runner contract, in process: every runner passes these through the ``runner_name`` fixture."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from behaviours import LOADS_DIR_VAR
from harness import Replies, wait_for_files

from runqy.protocol import TaskRequest
from runqy.runners.base import Runner

MakeRunner = Callable[..., Runner]

#: Answers that must come "at once" are asserted against this, far above normal and far below a stuck task.
PROMPT_S = 3.0


def test_every_task_is_answered_exactly_once_with_its_outcome(make_runner: MakeRunner) -> None:
    runner = make_runner()
    replies = Replies()
    kinds = {
        "echo": {"op": "echo", "n": 1},
        "fail": {"op": "fail", "message": "bad input"},
        "retryable": {"op": "retryable", "message": "try later"},
        "exit": {"op": "exit"},
    }
    ids = [f"{kind}-{n}" for n in range(100) for kind in kinds]
    for task_id in ids:
        replies.submit(runner, task_id, kinds[task_id.partition("-")[0]])
    replies.wait_for(*ids)
    assert all(len(replies.responses[t]) == 1 for t in ids)
    ok, failed, retryable, exited = (replies.one(f"{kind}-7") for kind in kinds)
    assert (ok.result, ok.error) == ({"op": "echo", "n": 1}, None)
    assert failed.retry is False and "ValueError: bad input" in (failed.error or "")
    assert retryable.retry is True and retryable.error == "try later"
    assert exited.retry is False and "SystemExit" in (exited.error or "")


def test_load_context_is_shared_as_the_runner_declares(make_runner: MakeRunner) -> None:
    runner = make_runner()
    replies = Replies()
    ids = [f"ctx-{n}" for n in range(4 * runner.capacity)]
    for task_id in ids:
        replies.submit(runner, task_id, {"op": "context"})
    results = [replies.one(t).result for t in ids]
    tokens_by_pid: dict[int, set[str]] = {}
    for result in results:
        tokens_by_pid.setdefault(result["pid"], set()).add(result["token"])
    assert all(len(tokens) == 1 for tokens in tokens_by_pid.values()), "@load must run once per process"
    if runner.capabilities.shares_load_context:
        assert len({r["token"] for r in results}) == 1


def test_start_is_idempotent_and_loads_once(make_runner: MakeRunner) -> None:
    from conftest import behaviours_registry

    runner = make_runner()
    runner.start(behaviours_registry())
    first = runner.run_task(_request("a", {"op": "context"}))
    second = runner.run_task(_request("b", {"op": "context"}))
    assert first.result["token"] == second.result["token"]


def test_timeout_names_the_limit_and_the_attempt(make_runner: MakeRunner) -> None:
    runner = make_runner(RUNQY_TASK_TIMEOUT_S="0.3", RUNQY_MAX_RETRIES="0")
    started = time.monotonic()
    response = runner.run_task(_request("slow", {"op": "stuck", "cooperative": True}))
    assert time.monotonic() - started < PROMPT_S
    assert response.retry is True
    assert "attempt 1" in (response.error or "") and "task_timeout_s=0.3" in (response.error or "")


def test_the_timeout_clock_starts_when_the_attempt_starts_not_when_queued(make_runner: MakeRunner) -> None:
    runner = make_runner(RUNQY_TASK_TIMEOUT_S="0.5", RUNQY_MAX_RETRIES="0")
    replies = Replies()
    # Three rounds of 0.2 s: the last round waits 0.4 s in the queue, then runs well within the limit.
    ids = [f"work-{n}" for n in range(3 * runner.capacity)]
    for task_id in ids:
        replies.submit(runner, task_id, {"op": "work", "seconds": 0.2})
    assert [replies.one(t).error for t in ids] == [None] * len(ids)


def test_retry_runs_while_the_timed_out_attempt_is_still_stuck(make_runner: MakeRunner, runner_name: str) -> None:
    runner = make_runner(RUNQY_TASK_TIMEOUT_S="0.3", RUNQY_MAX_RETRIES="1", RUNQY_RETRY_BACKOFF_S="0")
    started = time.monotonic()
    response = runner.run_task(_request("stuck-once", {"op": "stuck_first"}))
    assert time.monotonic() - started < PROMPT_S, "the retry waited for the stuck attempt"
    assert (response.result, response.error) == ({"attempt": 2}, None)
    # Killed with its process, or cancelled at its await: stopped. A thread can only be abandoned.
    stopped = runner.capabilities.hard_timeout or runner_name == "async"
    assert runner.abandoned_attempts == (0 if stopped else 1)


def test_full_capacity_while_a_task_is_stuck(make_runner: MakeRunner, tmp_path: Path) -> None:
    loads, meeting = tmp_path / "loads", tmp_path / "meeting"
    loads.mkdir(), meeting.mkdir()
    runner = make_runner(RUNQY_TASK_TIMEOUT_S="1", RUNQY_MAX_RETRIES="0", **{LOADS_DIR_VAR: str(loads)})
    loaded = len(os.listdir(loads))
    replies = Replies()
    replies.submit(runner, "stuck", {"op": "stuck"})
    assert "timed out" in (replies.one("stuck").error or "")
    if runner.capabilities.hard_timeout:
        # The stuck task's child was killed. Meeting tasks wait for each other under the 1 s
        # timeout, so they start once its replacement is loaded, not while it starts up.
        wait_for_files(loads, loaded + 1)
    # The stuck attempt runs on. These succeed only if `capacity` of them run at the same time beside it.
    meet = {"op": "rendezvous", "dir": str(meeting), "parties": runner.capacity}
    ids = [f"meet-{n}" for n in range(runner.capacity)]
    for task_id in ids:
        replies.submit(runner, task_id, meet)
    assert [replies.one(t).result for t in ids] == ["met"] * runner.capacity


def test_retryable_errors_are_retried_locally_then_flagged(make_runner: MakeRunner) -> None:
    runner = make_runner(RUNQY_MAX_RETRIES="2", RUNQY_RETRY_BACKOFF_S="0")
    recovered = runner.run_task(_request("flaky-3", {"op": "flaky", "succeed_on": 3}))
    assert (recovered.result, recovered.error) == ({"attempt": 3}, None)
    given_up = runner.run_task(_request("flaky-4", {"op": "flaky", "succeed_on": 4}))
    assert given_up.retry is True and given_up.error == "attempt 3 failed on purpose"
    not_retried = runner.run_task(_request("fail", {"op": "fail"}))
    assert not_retried.retry is False


def test_close_finishes_the_submitted_tasks(make_runner: MakeRunner) -> None:
    runner = make_runner()
    replies = Replies()
    ids = [f"work-{n}" for n in range(2 * runner.capacity + 1)]
    for task_id in ids:
        replies.submit(runner, task_id, {"op": "work", "seconds": 0.02})
    runner.close()
    assert set(replies.responses) == set(ids)
    assert all(replies.one(t).error is None for t in ids)


def test_submit_after_close_is_refused(make_runner: MakeRunner) -> None:
    from runqy.errors import RunnerClosed

    runner = make_runner()
    runner.close()
    with pytest.raises(RunnerClosed):
        runner.submit(_request("late", None), lambda response: None)


def _request(task_id: str, payload: object) -> TaskRequest:
    return TaskRequest(task_id, payload)
