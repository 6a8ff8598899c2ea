"""Small helpers for tests that wait on other threads or processes without sleeping."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runqy.protocol import TaskRequest, TaskResponse
from runqy.runners.base import Runner

#: Longest a test waits for something that normally takes milliseconds.
WAIT_S = 10.0
_POLL_S = 0.005


class Replies:
    """Collects the replies of submitted tasks, counting how often each task was answered."""

    def __init__(self) -> None:
        self.responses: dict[str, list[TaskResponse]] = {}
        self.received_at: dict[str, float] = {}
        self._changed = threading.Condition()

    def reply_for(self, task_id: str) -> Callable[[TaskResponse], None]:
        def reply(response: TaskResponse) -> None:
            with self._changed:
                self.responses.setdefault(task_id, []).append(response)
                self.received_at.setdefault(task_id, time.monotonic())
                self._changed.notify_all()

        return reply

    def submit(self, runner: Runner, task_id: str, payload: object) -> None:
        runner.submit(TaskRequest(task_id, payload), self.reply_for(task_id))

    def wait_for(self, *task_ids: str, timeout_s: float = WAIT_S) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: all(t in self.responses for t in task_ids), timeout_s):
                missing = [t for t in task_ids if t not in self.responses]
                raise AssertionError(f"no reply within {timeout_s}s for {missing[:10]} ({len(missing)} missing)")

    def one(self, task_id: str) -> TaskResponse:
        """The single reply of a task (fails if there were more)."""
        self.wait_for(task_id)
        responses = self.responses[task_id]
        assert len(responses) == 1, f"task {task_id} answered {len(responses)} times"
        return responses[0]


def wait_for_files(folder: Path, count: int, timeout_s: float = WAIT_S) -> None:
    """Wait until ``folder`` holds ``count`` files (tasks mark their start there)."""
    deadline = time.monotonic() + timeout_s
    while len(os.listdir(folder)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(os.listdir(folder))} of {count} files in {folder} after {timeout_s}s")
        time.sleep(_POLL_S)


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait until ``predicate()`` holds, for state that has no event to wait on."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s}s: {what}")
        time.sleep(_POLL_S)
