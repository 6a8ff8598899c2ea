"""The batching contract, in process and through the protocol: every runner passes these (``runner_name``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import async_batch_behaviours
import batch_behaviours
import pytest
from conftest import CLOSE_TIMEOUT_S, RUNNERS, STARTUP_TIMEOUT_S
from harness import Replies

from runqy.app import Registry
from runqy.config.resolve import load_settings
from runqy.local.driver import LocalWorker
from runqy.observe.telemetry import Telemetry
from runqy.protocol import TaskRequest
from runqy.runners.base import Runner

MakeRunner = Callable[..., Runner]
SIZE = batch_behaviours.BATCH_SIZE
#: The async runner runs async def handlers only: it serves the async twin of the batch behaviours.
BATCH_BEHAVIOURS_OF = {"async": async_batch_behaviours}


@pytest.fixture
def make_batch_runner(runner_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeRunner]:
    """Build and start the runner under test over the batch behaviours worker."""
    started: list[Runner] = []

    def make(**env: str) -> Runner:
        for name, value in {**RUNNERS[runner_name], **env}.items():
            monkeypatch.setenv(name, value)
        registry = Registry()
        registry.task(batch_size=SIZE)(BATCH_BEHAVIOURS_OF.get(runner_name, batch_behaviours).handle)
        runner = load_settings().build_runner()
        runner.start(registry)
        started.append(runner)
        return runner

    yield make
    for runner in started:
        runner.close(CLOSE_TIMEOUT_S)


def submit_all(runner: Runner, replies: Replies, payloads: dict[str, Any]) -> None:
    """Submit in one hand-off, as the serving loop does with a chunk: 64 in flight at once."""
    runner.submit_many(
        [(TaskRequest(task_id, payload), replies.reply_for(task_id)) for task_id, payload in payloads.items()]
    )


def test_calls_take_up_to_batch_size_and_each_task_is_answered_once(make_batch_runner: MakeRunner) -> None:
    runner = make_batch_runner()
    replies = Replies()
    kinds = ["echo"] * 6 + ["fail", "retryable"]
    payloads = {f"{kinds[n % 8]}-{n}": {"op": kinds[n % 8], "n": n} for n in range(64)}
    submit_all(runner, replies, payloads)
    replies.wait_for(*payloads)
    responses = {task_id: replies.one(task_id) for task_id in payloads}
    calls = {tuple(r.result["call"]) for r in responses.values() if r.error is None}
    assert all(1 <= len(call) <= SIZE for call in calls)
    assert max(len(call) for call in calls) > 1, "64 tasks in flight must share calls"
    assert isinstance(runner.telemetry, Telemetry)
    tally = runner.telemetry.tally()  # what the stats line and metrics report as the mean batch size
    assert tally.batched_tasks == 64 and len(calls) <= tally.batch_calls < 64
    for task_id, response in responses.items():
        kind = task_id.partition("-")[0]
        if kind == "echo":
            assert response.error is None and response.result["payload"] == payloads[task_id]
        elif kind == "fail":
            assert response.retry is False and f"ValueError: bad item {payloads[task_id]['n']}" in (
                response.error or ""
            )
        else:
            assert (response.error, response.retry) == ("try later", True)


def test_a_wrong_length_result_fails_only_the_tasks_of_that_call(make_batch_runner: MakeRunner) -> None:
    runner = make_batch_runner()
    replies = Replies()
    payloads = {f"t{n}": {"op": "short" if n == 5 else "echo"} for n in range(32)}
    submit_all(runner, replies, payloads)
    replies.wait_for(*payloads)
    short = replies.one("t5")
    assert short.retry is False
    assert "returned a list of" in (short.error or "") and "expected a list with one result per payload" in (
        short.error or ""
    )
    succeeded = [replies.one(t) for t in payloads if replies.one(t).error is None]
    assert succeeded, "calls without the short task succeed"
    assert all("t5" not in r.result["call"] for r in succeeded), "a task that shared the bad call was not failed"
    failed = [t for t in payloads if replies.one(t).error is not None]
    assert all(replies.one(t).error == short.error for t in failed)


def test_a_raising_call_fails_its_tasks_and_current_task_names_current_batch(make_batch_runner: MakeRunner) -> None:
    runner = make_batch_runner()
    replies = Replies()
    submit_all(runner, replies, {"raise": {"op": "raise"}})
    assert "ValueError: the whole call failed" in (replies.one("raise").error or "")
    submit_all(runner, replies, {"ct": {"op": "current_task"}})
    assert "use current_batch()" in replies.one("ct").result["current_task"]


def test_retryable_items_are_retried_locally_each_with_its_own_attempt(make_batch_runner: MakeRunner) -> None:
    runner = make_batch_runner(RUNQY_MAX_RETRIES="2", RUNQY_RETRY_BACKOFF_S="0")
    replies = Replies()
    submit_all(runner, replies, {"r": {"op": "retryable"}, "ok": {"op": "echo"}})
    retried, ok = replies.one("r"), replies.one("ok")
    assert (retried.error, retried.retry) == ("try later", True)  # after 3 attempts
    assert ok.error is None and ok.result["attempt"] == 1


def test_the_timeout_bounds_each_call(make_batch_runner: MakeRunner) -> None:
    runner = make_batch_runner(RUNQY_TASK_TIMEOUT_S="0.3")
    replies = Replies()
    submit_all(runner, replies, {"stuck": {"op": "stuck"}})
    response = replies.one("stuck")
    assert response.retry is True and "task timed out: attempt 1" in (response.error or "")
    submit_all(runner, replies, {"after": {"op": "echo"}})
    assert replies.one("after").error is None, "the runner serves on after a timed-out call"


def test_a_poison_item_is_found_and_the_others_of_its_batch_answered(
    make_batch_runner: MakeRunner, runner_name: str
) -> None:
    if runner_name not in ("process", "hybrid"):
        pytest.skip("only a child process can die of an item and be replaced")
    runner = make_batch_runner()
    replies = Replies()
    payloads = {f"t{n}": {"op": "exit" if n == 5 else "echo"} for n in range(SIZE)}
    submit_all(runner, replies, payloads)
    replies.wait_for(*payloads, timeout_s=60)
    poison = replies.one("t5")
    assert poison.retry is False and "not retried" in (poison.error or "")
    for task_id in payloads.keys() - {"t5"}:
        assert replies.one(task_id).error is None, task_id


@pytest.fixture
def batch_worker(runner_name: str) -> Iterator[LocalWorker]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQY_")}
    target = BATCH_BEHAVIOURS_OF.get(runner_name, batch_behaviours).__file__
    with LocalWorker.for_target(target, env={**env, **RUNNERS[runner_name]}) as worker:
        worker.wait_ready(STARTUP_TIMEOUT_S)
        yield worker


def test_an_unencodable_item_fails_only_its_task_on_the_wire(batch_worker: LocalWorker) -> None:
    requests = [{"task_id": f"t{n}", "payload": {"op": "not_json" if n == 3 else "echo"}} for n in range(16)]
    outcomes = {o.request["task_id"]: o for o in batch_worker.run(requests, concurrency=16, deadline_s=30)}
    assert len(outcomes) == 16
    bad = outcomes["t3"].response
    assert bad is not None and "result is not JSON" in bad["error"]
    for task_id, outcome in outcomes.items():
        if task_id != "t3":
            assert outcome.response is not None and outcome.response["error"] is None, task_id
