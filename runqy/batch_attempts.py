"""Timeouts and local retries of batch handler calls, for the in-process runners.

A batch call is timed as one attempt (``task_timeout_s`` bounds the call) by the same
watchdog as single attempts; each task then settles on its own::

    pool thread ── run_batch(tasks) ── call ──> one response per task
                                         │       ├─ final: reply
                                         │       └─ retryable, retries left: kept
                                         │  (backoff) the kept tasks, each as its own
                                         └───────  next attempt, go back to the queue
                                                   and join whatever batch forms next
    watchdog: the call overran ── its tasks answer with the timeout or are kept for
              a retry, queued by a fresh thread (the stuck thread is abandoned)

Requeued, a retry is called with the tasks that arrived meanwhile instead of in a
smaller call of its own. Without a queue to return to (or once the pool is closed)
the kept tasks are called again together, in the same thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from functools import partial

from runqy.app import failure_response
from runqy.attempts import _GONE, AttemptEngine, Reply, _Attempt, _clock, _Flag, settle, timed_out
from runqy.errors import RunnerClosed
from runqy.protocol import TaskRequest, TaskResponse

__all__ = ["BatchAttemptEngine", "BatchItem"]

log = logging.getLogger("runqy")

#: A task of a batch: its request, its reply, and the number of its next attempt.
BatchItem = tuple[TaskRequest, Reply, int]


class _BatchAttempt(_Attempt):
    """One timed batch call while it runs; the watchdog sees it as the attempt of its first task."""

    __slots__ = ("items",)

    def __init__(self, items: list[BatchItem], deadline: float) -> None:
        request, reply, number = items[0]
        super().__init__(request, number, reply, deadline)
        self.items = items


class BatchAttemptEngine(AttemptEngine):
    """Runs a batch handler's calls under a :class:`~runqy.attempts.RetryPolicy`; each task is answered once.

    Thread-safe, as :class:`~runqy.attempts.AttemptEngine`, whose watchdog it shares.
    """

    #: Where tasks kept for a retry go back to wait for a batch (the pool's queue); raises
    #: :class:`~runqy.errors.RunnerClosed` once it takes no more. None: retried in place.
    requeue: Callable[[list[BatchItem]], None] | None = None

    def run_batch(self, items: list[BatchItem]) -> bool:
        """Call the handler on ``items`` in the calling thread until each task is answered or requeued.

        Tasks whose result is a retryable failure are retried, each as its own next
        attempt, while they have local retries left: queued again through
        :attr:`requeue`, or called again here. Returns False when the calling thread
        was abandoned: a call timed out and another thread took over.
        """
        while items:
            started = _clock() if self.measured else None
            responses = self._call(items)
            if responses is None:
                return False
            items = self._settle_all(items, responses, started)
            if self._requeued(items):
                return True
        return True

    def _requeued(self, items: list[BatchItem]) -> bool:
        if not items or self.requeue is None:
            return False
        try:
            self.requeue(items)
        except RunnerClosed:
            return False  # the pool is closing: the retries run here rather than be lost
        return True

    def _call(self, items: list[BatchItem]) -> list[TaskResponse] | None:
        tasks = [(request, attempt) for request, _, attempt in items]
        self._observer.batch_called(len(tasks))
        try:
            if self.untimed:
                return self.handler.execute_batch(tasks)
            if self.handler.is_async:
                return self._call_async(tasks)
            return self._call_timed(items, tasks)
        except Exception as exc:  # a failure of runqy's own (the event loop closed): still an answer per task
            log.exception("a batch call of %d task(s) could not run", len(items))
            return [failure_response(request, exc) for request, _ in tasks]

    def _call_timed(self, items: list[BatchItem], tasks: list[tuple[TaskRequest, int]]) -> list[TaskResponse] | None:
        timeout_s = self.policy.task_timeout_s
        assert timeout_s is not None
        attempt = _BatchAttempt(items, time.monotonic() + timeout_s)
        self._running[attempt] = None
        responses = self.handler.execute_batch(tasks, attempt)
        if self._running.pop(attempt, _GONE) is _GONE:
            with self._lock:
                self._abandoned -= 1
            log.info("an abandoned batch call of %d task(s) finished after all; its results are dropped", len(items))
            return None
        return responses

    def _call_async(self, tasks: list[tuple[TaskRequest, int]]) -> list[TaskResponse]:
        loop, timeout_s = self.handler.loop, self.policy.task_timeout_s
        assert loop is not None
        if timeout_s is None:
            return loop.run(self.handler.execute_batch_async(tasks))
        cancel = _Flag()
        future = loop.submit(self.handler.execute_batch_async(tasks, cancel))
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            cancel.cancelled = True  # a coroutine is really stopped: cancelling the future cancels its task
            future.cancel()
            return [timed_out(request, timeout_s, number) for request, number in tasks]

    def _settle_all(
        self, items: list[BatchItem], responses: list[TaskResponse], started: float | None = None
    ) -> list[BatchItem]:
        """Reply to every task whose response is final; back off and return the others as their next attempts."""
        retry: list[BatchItem] = []
        backoff_s = 0.0
        for (request, reply, attempt), response in zip(items, responses, strict=True):
            wait_s = settle(self.policy, self._observer, self.measured, request, attempt, response, started)
            if wait_s is None:
                try:
                    reply(response)
                except Exception:  # a broken reply callback must not cost the other tasks their answers
                    log.exception("task %s: error while answering it", request.task_id)
                continue
            retry.append((request, reply, attempt + 1))
            backoff_s = max(backoff_s, wait_s)
        if backoff_s > 0:
            time.sleep(backoff_s)
        return retry

    def _expire(self, attempt: _Attempt) -> None:
        if not isinstance(attempt, _BatchAttempt):
            super()._expire(attempt)
            return
        if not self._abandon(attempt):
            return
        timeout_s = self.policy.task_timeout_s
        assert timeout_s is not None
        for request, _, number in attempt.items:
            self._observer.abandoned(request, number, attempt.thread.name, timeout_s)
        responses = [timed_out(request, timeout_s, number) for request, _, number in attempt.items]
        try:
            self._on_abandon(attempt.thread, partial(self._resume_batch, attempt.items, responses))
        except Exception:  # no thread to take over: answer every task with the timeout now
            log.exception("cannot hand over a timed-out batch call; answering its tasks with the timeout")
            for (_, reply, _), response in zip(attempt.items, responses, strict=True):
                reply(response)

    def _resume_batch(self, items: list[BatchItem], responses: list[TaskResponse]) -> bool:
        """The rest of a batch after its call timed out, on a fresh thread."""
        retry = self._settle_all(items, responses)
        return self._requeued(retry) or self.run_batch(retry)
