"""Timeouts and local retries of in-process attempts, in one place for every in-process runner.

A timed attempt runs on a dedicated single-worker executor taken from a free list.
Python cannot kill a thread, so an attempt that overruns ``task_timeout_s`` is
abandoned: its cancellation flag is set, its executor is never reused, and the
retry runs on another executor, so a retry is never queued behind a stuck attempt.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
from dataclasses import dataclass

from runqy.app import BoundHandler
from runqy.errors import TaskTimeout
from runqy.protocol import TaskRequest, TaskResponse

__all__ = ["AttemptEngine", "RetryPolicy"]

log = logging.getLogger("runqy")


@dataclass(frozen=True)
class RetryPolicy:
    """How long one attempt may run and how often a retryable failure is tried again locally."""

    task_timeout_s: float | None = None
    max_retries: int = 0
    retry_backoff_s: float = 0.0
    max_abandoned_threads: int = 16

    def backoff_s(self, failed_attempt: int) -> float:
        """Exponential backoff with full jitter, so that retries of many tasks do not move in step."""
        return self.retry_backoff_s * (2.0 ** (failed_attempt - 1)) * random.uniform(0.5, 1.0)


class AttemptEngine:
    """Runs a task's attempts under a :class:`RetryPolicy` and returns its one final response."""

    def __init__(self, handler: BoundHandler, policy: RetryPolicy) -> None:
        self.handler = handler
        self.policy = policy
        self._free: list[concurrent.futures.ThreadPoolExecutor] = []
        self._lock = threading.Lock()
        self.abandoned = 0

    def run(self, request: TaskRequest, attempt: int = 1) -> TaskResponse:
        """Run attempts until one succeeds, fails for good, or the local retries are used up; blocks.

        ``attempt`` numbers the first attempt run here (a process runner's child runs
        attempt N of a task whose earlier attempts ran elsewhere).
        """
        while True:
            response = self._attempt(request, attempt)
            if not response.retry or attempt > self.policy.max_retries:
                return response
            log.info("task %s: attempt %d failed, retrying: %s", request.task_id, attempt, _summary(response.error))
            time.sleep(self.policy.backoff_s(attempt))
            attempt += 1

    def _attempt(self, request: TaskRequest, attempt: int) -> TaskResponse:
        timeout_s = self.policy.task_timeout_s
        if timeout_s is None:
            return self.handler.execute_blocking(request, attempt)
        cancel = threading.Event()
        if self.handler.is_async and self.handler.loop is not None:
            # Coroutines can really be cancelled: no thread is left behind.
            future = self.handler.loop.submit(self.handler.execute_async(request, attempt, cancel))
            try:
                return future.result(timeout_s)
            except concurrent.futures.TimeoutError:
                cancel.set()
                future.cancel()
                return self._timed_out(request, timeout_s, attempt)
        executor = self._take_executor()
        future = executor.submit(self.handler.execute, request, attempt, cancel)
        try:
            response = future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            cancel.set()
            self._abandon(executor, future)
            return self._timed_out(request, timeout_s, attempt)
        with self._lock:
            self._free.append(executor)
        return response

    def _take_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._free:
                return self._free.pop()
        return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="runqy-attempt")

    def _abandon(
        self, executor: concurrent.futures.ThreadPoolExecutor, future: concurrent.futures.Future[TaskResponse]
    ) -> None:
        executor.shutdown(wait=False)
        with self._lock:
            self.abandoned += 1
            over = self.abandoned > self.policy.max_abandoned_threads
        future.add_done_callback(self._abandoned_finished)
        if over:
            log.warning(
                "%d timed-out attempts are still running in abandoned threads (max_abandoned_threads=%d): "
                "make the handler check current_task().cancelled, or use a process runner, which kills them",
                self.abandoned,
                self.policy.max_abandoned_threads,
            )

    def _abandoned_finished(self, _: object) -> None:
        with self._lock:
            self.abandoned -= 1

    @staticmethod
    def _timed_out(request: TaskRequest, timeout_s: float, attempt: int) -> TaskResponse:
        return TaskResponse.failure(request.task_id, str(TaskTimeout(timeout_s, attempt)), retry=True)

    def close(self) -> None:
        """Release the idle executors; abandoned attempts are left to finish on their own."""
        with self._lock:
            free, self._free = self._free, []
        for executor in free:
            executor.shutdown(wait=False)


def _summary(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""
