"""Helpers shared by the tests of the process and hybrid runners.

Every task a test submits through :func:`submit` or :func:`run_task` is answered
through a counting :class:`Answer`; when :func:`started` closes the runner, each of
them must have been answered exactly once, whatever the task did to its child.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import misbehaving
import psutil

from runqy.app import Registry
from runqy.attempts import RetryPolicy
from runqy.protocol import TaskRequest, TaskResponse
from runqy.runners.process import PersistentProcessRunner

#: Generous bound for anything that should take well under a second.
DEADLINE_S = 10.0


def request(action: str, task_id: str | None = None, **fields: Any) -> TaskRequest:
    return TaskRequest(task_id or str(uuid.uuid4()), {"do": action, **fields})


@contextmanager
def started(
    runner_cls: type[PersistentProcessRunner] = PersistentProcessRunner,
    registry: Registry = misbehaving.registry,
    *,
    task_timeout_s: float | None = None,
    max_retries: int = 0,
    max_abandoned_threads: int = 16,
    **options: Any,
) -> Iterator[PersistentProcessRunner]:
    """A started runner over the misbehaving handlers, closed at the end."""
    policy = RetryPolicy(task_timeout_s, max_retries, 0.0, max_abandoned_threads)
    runner = runner_cls(policy, **{"num_processes": 1, **options})
    runner.start(registry)
    answers = _submitted[runner] = []
    try:
        yield runner
    finally:
        runner.close(timeout_s=0)  # answers whatever is still running or queued
        del _submitted[runner]
    # Not reached when the test failed already: its own failure is the one to see.
    counts = {answer.task_id: len(answer.responses) for answer in answers}
    assert all(count == 1 for count in counts.values()), f"answers per task, each must be 1: {counts}"


class Answer:
    """The reply of one submitted task, counting its calls: a second answer fails the test."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.responses: list[TaskResponse] = []
        self.done = threading.Event()
        self.at = 0.0

    def __call__(self, response: TaskResponse) -> None:
        self.responses.append(response)
        if len(self.responses) == 1:
            self.at = time.monotonic()
            self.done.set()

    def wait(self, timeout_s: float = DEADLINE_S) -> TaskResponse:
        """The task's answer; fails if it was answered twice by now."""
        assert self.done.wait(timeout_s), "the task was not answered in time"
        assert len(self.responses) == 1, f"task {self.task_id} answered {len(self.responses)} times: {self.responses}"
        return self.responses[0]


#: The answers of every task submitted to each runner that :func:`started` started and has not closed yet.
_submitted: dict[PersistentProcessRunner, list[Answer]] = {}


def submit(runner: PersistentProcessRunner, req: TaskRequest) -> Answer:
    answer = Answer(req.task_id)
    _submitted.get(runner, []).append(answer)
    runner.submit(req, answer)
    return answer


def run_task(runner: PersistentProcessRunner, req: TaskRequest) -> TaskResponse:
    """Submit a task and wait for its answer (counted, unlike ``Runner.run_task``)."""
    return submit(runner, req).wait()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout_s: float = DEADLINE_S) -> bool:
    """Wait until the process is gone (or a zombie nobody reaps yet); False at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_for_file(path: Any, timeout_s: float = DEADLINE_S) -> str:
    """Wait until a task wrote its mark file; returns its text."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            text: str = path.read_text()
        except FileNotFoundError:
            text = ""
        if text:
            return text
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.01)
