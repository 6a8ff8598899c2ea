"""Several tasks in one message to a process-runner child: crashes, timeouts and answers stay exact.

Once the runner has seen that tasks are short, an idle child takes its share of the
waiting tasks in one message and runs them one after the other. The tests submit a
burst to one child after such a warm-up, so that the burst travels together.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from process_helpers import Answer, request, started

from runqy.protocol import TaskRequest
from runqy.runners._wire import FrameReader, encode
from runqy.runners.process import PersistentProcessRunner

pytestmark = pytest.mark.timeout(30)


def warmed_up(runner: PersistentProcessRunner) -> None:
    """Answer enough no-ops that the runner counts tasks as short and groups the next burst."""
    for _ in range(10):
        assert runner.run_task(request("noop")).error is None


def submit_burst(runner: PersistentProcessRunner, requests: list[TaskRequest]) -> list[Answer]:
    answers = [Answer(r.task_id) for r in requests]
    runner.submit_many(list(zip(requests, answers, strict=True)))
    return answers


def test_a_crash_blames_only_the_running_task_and_the_tasks_queued_behind_it_succeed() -> None:
    with started(max_retries=0) as runner:
        warmed_up(runner)
        [first_child] = runner.child_pids
        innocents = [request("echo", task_id=f"innocent-{i}", value=i) for i in range(3)]
        crash, *rest = submit_burst(runner, [request("exit", code=7), *innocents])
        response = crash.wait()
        assert response.error is not None and "exited with code 7" in response.error and response.retry is True
        results = [answer.wait() for answer in rest]
        # Never started in the crashed child: run again there, as first attempts, answered once each.
        assert [r.result["echo"] for r in results] == [0, 1, 2]
        assert all(r.result["attempt"] == 1 and r.result["pid"] != first_child for r in results)
        assert all(len(answer.responses) == 1 for answer in [crash, *rest])
        # Not blamed: one crash of their own now is their first, not the second that makes poison.
        for innocent in innocents:
            again = runner.run_task(TaskRequest(innocent.task_id, {"do": "exit", "code": 3}))
            assert again.retry is True and "brought down" not in (again.error or "")


def test_a_task_killing_its_children_is_still_poison_when_it_travels_with_others() -> None:
    with started(max_retries=3) as runner:
        warmed_up(runner)
        poison, *others = submit_burst(runner, [request("exit", task_id="poison"), *(request("pid") for _ in range(3))])
        response = poison.wait()
        assert response.retry is False and "brought down 2 worker processes" in (response.error or "")
        assert all(answer.wait().error is None for answer in others)


def test_a_timeout_counts_from_the_start_of_the_task_not_from_its_message() -> None:
    with started(task_timeout_s=0.6) as runner:
        warmed_up(runner)
        [child] = runner.child_pids
        # Together they take longer than the timeout; each alone does not.
        answers = submit_burst(runner, [request("sleep", ms=350), request("sleep", ms=350)])
        assert [answer.wait().error for answer in answers] == [None, None]
        assert runner.child_pids == [child]


def test_a_queued_task_that_hangs_is_killed_on_time_and_the_tasks_behind_it_run_elsewhere() -> None:
    with started(task_timeout_s=0.5) as runner:
        warmed_up(runner)
        [child] = runner.child_pids
        sent = time.monotonic()
        before, hung, *after = submit_burst(runner, [request("pid"), request("hang"), request("pid"), request("pid")])
        assert before.wait().result == child
        response = hung.wait()
        assert response.error is not None and "timed out" in response.error
        assert 0.5 <= hung.at - sent < 2.0
        assert [answer.wait().error for answer in after] == [None, None]
        assert all(answer.responses[0].result != child for answer in after)


# --- the frames on the pipe ------------------------------------------------------------


class _Point:
    """A result marshal cannot encode: it travels pickled."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Point) and other.x == self.x

    def __hash__(self) -> int:
        return self.x


def read_all(messages: list[tuple[Any, ...]], chunk: int) -> list[Any]:
    """Write the frames through a real pipe in pieces of ``chunk`` bytes; read them back."""
    read_fd, write_fd = os.pipe()
    data = b"".join(encode(message) for message in messages)

    def write() -> None:
        for start in range(0, len(data), chunk):
            os.write(write_fd, data[start : start + chunk])
        os.close(write_fd)

    writer = threading.Thread(target=write)
    writer.start()
    reader = FrameReader(read_fd)
    received: list[Any] = []
    while (batch := reader.read()) is not None:
        received += batch
    writer.join()
    os.close(read_fd)
    return received


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_frames_survive_any_cut_of_the_stream(chunk: int) -> None:
    messages: list[tuple[Any, ...]] = [
        (0, [(1, 1, ("t", {"a": [1, 2.5, None, True, "é"]}, "q", "", 0, 3))]),
        (2, 7, 1, "t", _Point(3), None, False, 0, 0, "ok", 0.001, "MainThread"),
        (1,),
    ]
    assert read_all(messages, chunk) == messages


def test_a_large_frame_arrives_whole() -> None:
    big = (2, "x" * (3 << 20))
    assert read_all([big, (1,)], 1 << 16) == [big, (1,)]
