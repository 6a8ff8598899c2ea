"""Batch handlers on the async runner, beyond the batch contract (tests/test_contract_batch.py runs here too).

What only a loop of batch calls promises: a call takes one ``max_concurrency`` slot
whatever its size; ``max_wait_ms`` waits on a loop timer, and a lone task with none
is not held back; a timed-out call is cancelled and its tasks retried one by one in
later batches; an offloaded plain batch handler runs one call per pool thread; close
and SIGTERM answer every task once; ``Worker.map`` and ``runqy local`` serve an
``async def`` batch handler here.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import async_batch_behaviours
import pytest
from conftest import CLEAN_ENV, STARTUP_TIMEOUT_S
from harness import WAIT_S, Replies, wait_for_files, wait_until

from runqy import Worker, current_batch, load_settings
from runqy.app import Registry
from runqy.local.driver import LocalWorker, make_request
from runqy.protocol import TaskRequest
from runqy.runners.eventloop import AsyncRunner
from runqy.runners.thread import default_max_threads

SIZE = async_batch_behaviours.BATCH_SIZE


def behaviours_registry() -> Registry:
    async_batch_behaviours.cancelled.clear()
    registry = Registry()
    registry.task(batch_size=SIZE)(async_batch_behaviours.handle)
    return registry


def submit_chunk(runner: AsyncRunner, replies: Replies, payloads: dict[str, Any]) -> None:
    """One hand-off, as the serving loop does with the requests of one read."""
    runner.submit_many(
        [(TaskRequest(task_id, payload), replies.reply_for(task_id)) for task_id, payload in payloads.items()]
    )


class GatedCalls:
    """A batch handler whose calls wait for a gate the test opens, recording each call and the calls in flight."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[str]] = []
        self.in_flight = 0
        self.peak = 0

    async def handle(self, payloads: list[Any]) -> list[Any]:
        self.calls.append([info.task_id for info in current_batch()])
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if "hold" in payloads:
            await asyncio.to_thread(self.gate.wait, WAIT_S)
        self.in_flight -= 1
        return payloads


def test_a_batch_call_takes_one_slot_whatever_its_size(start_runner: Callable[..., AsyncRunner]) -> None:
    handler = GatedCalls()
    registry = Registry()
    registry.task(batch_size=SIZE)(handler.handle)
    runner = start_runner(registry, runner={"max_concurrency": 2})
    replies = Replies()
    first = {f"a{n}": "hold" for n in range(2 * SIZE)}
    submit_chunk(runner, replies, first)
    wait_until(lambda: handler.in_flight == 2, "16 tasks running as two calls in the two slots")
    later = {f"b{n}": "go" for n in range(SIZE)}
    submit_chunk(runner, replies, later)  # no slot is free: they wait, together
    handler.gate.set()
    replies.wait_for(*first, *later)
    assert [len(call) for call in handler.calls] == [SIZE, SIZE, SIZE]
    assert handler.calls[2] == list(later), "the first slot freed took every task that waited, in one call"
    assert handler.peak == 2, "never more calls at once than max_concurrency"


def test_with_no_max_wait_a_free_slot_takes_a_lone_task_at_once(start_runner: Callable[..., AsyncRunner]) -> None:
    handler = GatedCalls()
    registry = Registry()
    registry.task(batch_size=SIZE)(handler.handle)
    runner = start_runner(registry, runner={"max_concurrency": 4})
    replies = Replies()
    replies.submit(runner, "first", "hold")
    wait_until(lambda: handler.calls == [["first"]], "the first task's call started")
    replies.submit(runner, "second", "go")
    replies.wait_for("second")
    assert "first" not in replies.responses, "the second was answered while the first still ran"
    assert handler.calls == [["first"], ["second"]], "a lone task went out alone, not kept for company"
    handler.gate.set()
    assert replies.one("first").result == "hold"


def test_a_short_batch_waits_on_the_loop_for_company_up_to_max_wait(start_runner: Callable[..., AsyncRunner]) -> None:
    registry = Registry()

    @registry.task(batch_size=SIZE, max_wait_ms=300)
    async def handle(payloads: list[Any]) -> list[Any]:
        return [[info.task_id for info in current_batch()]] * len(payloads)

    runner = start_runner(registry)
    replies = Replies()
    sent_at = time.monotonic()
    replies.submit(runner, "a", None)
    replies.submit(runner, "b", None)  # a hand-off of its own: the loop takes it in while "a" waits
    assert replies.one("a").result == replies.one("b").result == ["a", "b"]
    waited_s = replies.received_at["a"] - sent_at
    assert 0.3 <= waited_s < WAIT_S, "a short batch goes out max_wait_ms after its oldest task arrived"
    full = {f"f{n}": None for n in range(SIZE)}
    submit_chunk(runner, replies, full)
    replies.wait_for(*full)
    assert replies.one("f0").result == list(full), "a full batch goes out as one call"


def test_a_timed_out_call_is_cancelled_and_its_tasks_retried_one_by_one_in_later_batches(
    start_runner: Callable[..., AsyncRunner],
) -> None:
    runner = start_runner(
        behaviours_registry(), task_timeout_s=1.0, max_retries=1, retry_backoff_s=0, runner={"max_concurrency": 1}
    )
    replies = Replies()
    submit_chunk(runner, replies, {"s": {"op": "stuck_first"}, "x": {"op": "echo"}})
    submit_chunk(runner, replies, {"e1": {"op": "echo"}, "e2": {"op": "echo"}})  # wait: the one slot is busy
    replies.wait_for("s", "x", "e1", "e2")
    assert async_batch_behaviours.cancelled == [["s", "x"]], "the stuck call's coroutine was cancelled"
    for task_id, attempt in {"s": 2, "x": 2, "e1": 1, "e2": 1}.items():
        response = replies.one(task_id)
        assert response.error is None and response.result["attempt"] == attempt, (task_id, response)
        assert response.result["call"] == ["e1", "e2", "s", "x"], "the retries joined the tasks that came meanwhile"


def test_close_answers_running_waiting_and_backing_off_tasks_once(start_runner: Callable[..., AsyncRunner]) -> None:
    runner = start_runner(behaviours_registry(), max_retries=1, retry_backoff_s=60, runner={"max_concurrency": 1})
    replies = Replies()
    submit_chunk(runner, replies, {"r": {"op": "retryable"}})  # its retry backs off for 30 s or more
    submit_chunk(runner, replies, {"stuck": {"op": "stuck"}})
    submit_chunk(runner, replies, {"w1": {"op": "echo"}, "w2": {"op": "echo"}})
    runner.close(0.5)
    for task_id in ("r", "stuck", "w1", "w2"):
        response = replies.one(task_id)
        assert response.retry and "shut down before the task finished" in (response.error or ""), (task_id, response)
    assert ["stuck"] in [call[:1] for call in async_batch_behaviours.cancelled], "the running call was cancelled"


def test_close_sends_a_short_batch_at_once_instead_of_waiting_for_company(
    start_runner: Callable[..., AsyncRunner],
) -> None:
    registry = Registry()

    @registry.task(batch_size=SIZE, max_wait_ms=60_000)
    async def handle(payloads: list[Any]) -> list[Any]:
        return payloads

    runner = start_runner(registry)
    replies = Replies()
    replies.submit(runner, "lone", "done")
    runner.close(WAIT_S)  # no task can join it any more: waiting on would only delay the answer
    assert replies.one("lone").result == "done"


def test_an_offloaded_plain_batch_handler_runs_one_call_per_pool_thread_and_batches_what_waits(
    start_runner: Callable[..., AsyncRunner],
) -> None:
    gate = threading.Event()
    calls: list[tuple[list[str], str]] = []
    registry = Registry()

    @registry.task(batch_size=SIZE, offload=True)
    def handle(payloads: list[Any]) -> list[Any]:
        calls.append(([info.task_id for info in current_batch()], threading.current_thread().name))
        if "hold" in payloads:
            gate.wait(WAIT_S)
        return payloads

    runner = start_runner(registry)  # 1000 slots, but only as many calls at once as pool threads
    replies = Replies()
    threads = default_max_threads()
    for n in range(threads):
        replies.submit(runner, f"hold{n}", "hold")  # one by one: each goes out alone while a thread is free
    wait_until(lambda: len(calls) == threads, "every pool thread holds a call")
    later = [f"later{n}" for n in range(SIZE)]
    for task_id in later:
        replies.submit(runner, task_id, "go")  # one by one too, but no thread is free: they wait together
    gate.set()
    replies.wait_for(*later, *(f"hold{n}" for n in range(threads)))
    assert [ids for ids, _ in calls[threads:]] == [later], "the tasks that waited went out as one call"
    assert all(name.startswith("runqy-offload") for _, name in calls)


@pytest.mark.timeout(60)
def test_sigterm_with_batch_calls_running_answers_every_accepted_task_and_exits_zero(tmp_path: Path) -> None:
    target = async_batch_behaviours.__file__
    env = {**CLEAN_ENV, "RUNQY_RUNNER_CLS": "async", "RUNQY_SHUTDOWN_TIMEOUT_S": "0.5"}
    with LocalWorker.for_target(target, env=env) as worker:
        worker.wait_ready(STARTUP_TIMEOUT_S)
        warm = list(worker.run([make_request({"op": "echo"}) for _ in range(SIZE)], concurrency=SIZE, deadline_s=30))
        assert [o.status for o in warm] == ["ok"] * SIZE
        pendings = [worker.submit(make_request({"op": "stuck", "dir": str(tmp_path)})) for _ in range(4 * SIZE)]
        wait_for_files(tmp_path, 4 * SIZE)  # every task is in a running call: the signal lands mid-call
        worker.terminate()
        assert worker.wait(timeout_s=30) == 0
        assert [p.outcome().status for p in pendings] == ["retryable"] * (4 * SIZE)
        assert worker.unmatched_responses == [] and worker.garbage_lines == []


def test_worker_map_runs_an_async_batch_handler_on_the_async_runner() -> None:
    registry = Registry()

    @registry.task(batch_size=SIZE)
    async def double(payloads: list[int]) -> list[dict[str, int]]:
        await asyncio.sleep(0.01)  # stands for a model call: tasks pile up meanwhile
        return [{"value": 2 * p, "call": len(payloads)} for p in payloads]

    with Worker(load_settings(runner_cls="async", runner={"max_concurrency": 2}), registry) as worker:
        results = worker.map(range(100))
    assert [r["value"] for r in results] == [2 * n for n in range(100)]
    assert max(r["call"] for r in results) > 1, "tasks waiting for the two slots shared calls"


ASYNC_BATCH_WORKER = """
from runqy import current_batch, task

@task(batch_size=8)
async def handle(payloads):
    return [{"payload": p, "call": len(current_batch())} for p in payloads]
"""


@pytest.mark.timeout(60)
def test_runqy_local_serves_an_async_batch_handler_on_the_async_runner(tmp_path: Path) -> None:
    (tmp_path / "batch_worker.py").write_text(ASYNC_BATCH_WORKER)
    args = ["local", "batch_worker.py", "--runner", "async", "--generate", "64", "--concurrency", "32"]
    done = subprocess.run(
        [sys.executable, "-m", "runqy", *args], capture_output=True, text=True, env=CLEAN_ENV, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    summary = next(line for line in done.stderr.splitlines() if line.strip().startswith("ok "))
    assert dict(re.findall(r"(\w+) (\d+)", summary)) == {"ok": "64", "failed": "0", "retryable": "0", "lost": "0"}
    responses = [json.loads(line) for line in done.stdout.splitlines()]
    assert len({r["task_id"] for r in responses}) == 64
    assert all(r["error"] is None and 1 <= r["result"]["call"] <= 8 for r in responses)
