"""Timeouts and local retries of in-process attempts, in one place for every in-process runner.

An attempt runs in the thread that took the task, with no hand-off: handing a trivial
task to another thread and waiting for it costs several times the task itself. A
single watchdog thread per engine enforces ``task_timeout_s``::

    runner thread ──run()──> attempt 1 (registered with its deadline) ──> reply
                                  │ overran its deadline
    watchdog ── sets its cancellation flag, counts the thread as abandoned,
                hands the rest of the task to a fresh thread:
                                  └──> backoff, attempt 2 ──> reply

Python cannot kill a thread, so the thread of a timed-out attempt is abandoned: when
its handler finally returns, the result is dropped and the thread stops serving. The
retry runs on the fresh thread, so **a retry is never queued behind a stuck
attempt**, and a runner keeps its full number of serving threads meanwhile.

``async def`` handlers run on the worker's event loop instead, and a timed-out
coroutine is really cancelled: no thread is left behind.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final

from runqy.app import BoundHandler, failure_response
from runqy.errors import TaskTimeout
from runqy.observe.telemetry import FAILED, OK, RETRY, TIMED_OUT, TaskObserver
from runqy.protocol import TaskRequest, TaskResponse

__all__ = [
    "AttemptEngine",
    "Continuation",
    "RetryPolicy",
    "TimedOutResponse",
    "outcome_of",
    "resolve_exception",
    "settle",
    "timed_out",
]

log = logging.getLogger("runqy")

#: Called exactly once with a task's final response.
Reply = Callable[[TaskResponse], None]
#: The rest of a task whose attempt timed out; returns False if its thread was abandoned in turn.
Continuation = Callable[[], bool]
#: Told that ``thread`` was abandoned; must run ``continuation`` on another thread.
OnAbandon = Callable[[threading.Thread, Continuation], None]

_GONE: Final = object()
_clock: Final = time.perf_counter


class TimedOutResponse(TaskResponse):
    """The response of an attempt that ran out of time: a TaskResponse that says why, for the counts."""

    __slots__ = ()


def outcome_of(response: TaskResponse) -> str:
    """How an attempt with this response ended: ok, failed, retry or timed_out."""
    if response.error is None:
        return OK
    if isinstance(response, TimedOutResponse):
        return TIMED_OUT
    return RETRY if response.retry else FAILED


@dataclass(frozen=True)
class RetryPolicy:
    """How long one attempt may run and how often a retryable failure is tried again locally."""

    task_timeout_s: float | None = None
    max_retries: int = 0
    retry_backoff_s: float = 0.0
    max_abandoned_threads: int = 16
    #: Exception classes retried like ``RetryableError`` (the ``retry_exceptions`` setting).
    retry_exceptions: tuple[type[BaseException], ...] = ()

    def backoff_s(self, failed_attempt: int) -> float:
        """Exponential backoff with jitter: ``retry_backoff_s * 2**(n-1)``, scaled by a random 0.5 to 1.

        The jitter keeps the retries of many tasks that failed together (a database
        blip) from hitting the same resource again in step.
        """
        return self.retry_backoff_s * (2.0 ** (failed_attempt - 1)) * random.uniform(0.5, 1.0)


class _Flag:
    """The cancellation flag of an attempt, as ``current_task().cancelled`` reads it.

    Lighter than a ``threading.Event``, whose creation costs more than a trivial task.
    """

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def is_set(self) -> bool:
        return self.cancelled


class _Attempt(_Flag):
    """One timed attempt while it runs, with what the watchdog needs to give up on it."""

    __slots__ = ("deadline", "number", "reply", "request", "thread")

    def __init__(self, request: TaskRequest, number: int, reply: Reply, deadline: float) -> None:
        self.cancelled = False  # set here rather than through _Flag.__init__: one call less per attempt
        self.request = request
        self.number = number
        self.reply = reply
        self.deadline = deadline
        self.thread = threading.current_thread()


class AttemptEngine:
    """Runs a task's attempts under a :class:`RetryPolicy` and replies once with its final response.

    Thread-safe: any number of threads may call :meth:`run` at once.
    """

    def __init__(
        self,
        handler: BoundHandler,
        policy: RetryPolicy,
        on_abandon: OnAbandon,
        observer: TaskObserver | None = None,
    ) -> None:
        self.handler = handler
        self.policy = policy
        self._observer = observer or TaskObserver()
        #: Time every attempt; otherwise (the default) a quick successful task costs no clock read.
        self.measured = self._observer.measures
        # The handler maps exceptions to responses, so it is what must know the retryable ones.
        handler.retry_exceptions = policy.retry_exceptions
        self._on_abandon = on_abandon
        self._lock = threading.Lock()
        self._abandoned = 0
        # Timed attempts in progress. Both the finishing thread and the watchdog claim an
        # attempt by popping it, an atomic dict operation, so exactly one of them wins.
        self._running: dict[_Attempt, None] = {}
        #: Attempts are plain calls in the calling thread with no time limit: none is ever
        #: abandoned, and run() calls the handler directly (the common case, decided once).
        self.untimed = policy.task_timeout_s is None and not handler.is_async
        #: Untimed and unmeasured: an attempt is a call to the handler and nothing else.
        self._plain = self.untimed and not self.measured
        self._watchdog: _Watchdog | None = None
        if policy.task_timeout_s is not None and not handler.is_async:
            self._watchdog = _Watchdog(self, policy.task_timeout_s)

    @property
    def abandoned(self) -> int:
        """Timed-out attempts whose threads are still running."""
        return self._abandoned

    def run(self, request: TaskRequest, reply: Reply, first_attempt: int = 1) -> bool:
        """Run attempts in the calling thread until the task is done, then ``reply``.

        Returns False when the calling thread was abandoned: one of its attempts timed
        out, another thread took over the task, and this thread must stop serving.
        """
        attempt = first_attempt
        while True:
            started: float | None = None
            if self._plain:
                # The common case: a plain call, and a success answered at once (hot path).
                response = self.handler.execute(request, attempt)
                if response.error is None:
                    reply(response)
                    return True
            else:
                started = _clock() if self.measured else None
                attempted = self._attempt_guarded(request, attempt, reply)
                if attempted is None:
                    return False
                response = attempted
            if self._settle(request, reply, attempt, response, started):
                return True
            attempt += 1

    def _attempt_guarded(self, request: TaskRequest, attempt: int, reply: Reply) -> TaskResponse | None:
        """One attempt, timed or not; None when the watchdog gave up on it meanwhile."""
        try:
            return self.handler.execute(request, attempt) if self.untimed else self._attempt(request, attempt, reply)
        except Exception as exc:  # a failure of runqy's own (the event loop closed): still an answer
            log.exception("task %s: attempt %d could not run", request.task_id, attempt)
            return failure_response(request, exc)

    def _settle(
        self,
        request: TaskRequest,
        reply: Reply,
        attempt: int,
        response: TaskResponse,
        started: float | None,
        thread: threading.Thread | None = None,
    ) -> bool:
        """Reply if ``response`` is final; else wait out the backoff and return False.

        ``started``: when the attempt began (None when not measured); ``thread``: where
        it ran, if not in the calling thread.
        """
        if response.error is None and not self.measured:  # the common case, nothing to observe: one call less
            reply(response)
            return True
        backoff_s = settle(self.policy, self._observer, self.measured, request, attempt, response, started, thread)
        if backoff_s is None:
            reply(response)
            return True
        if backoff_s > 0:
            time.sleep(backoff_s)
        return False

    def _attempt(self, request: TaskRequest, number: int, reply: Reply) -> TaskResponse | None:
        """One timed or ``async`` attempt's response, or None when the watchdog gave up on it meanwhile."""
        timeout_s = self.policy.task_timeout_s
        if self.handler.is_async:
            return self._attempt_async(request, number, timeout_s)
        assert timeout_s is not None
        attempt = _Attempt(request, number, reply, _clock() + timeout_s)
        self._running[attempt] = None
        response = self.handler.execute(request, number, attempt)
        if self._running.pop(attempt, _GONE) is _GONE:
            with self._lock:
                self._abandoned -= 1
            log.info("task %s: abandoned attempt %d finished after all; its result is dropped", request.task_id, number)
            return None
        return response

    def _attempt_async(self, request: TaskRequest, number: int, timeout_s: float | None) -> TaskResponse:
        assert self.handler.loop is not None
        if timeout_s is None:
            return self.handler.loop.run(self.handler.execute_async(request, number))
        cancel = _Flag()
        future = self.handler.loop.submit(self.handler.execute_async(request, number, cancel))
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            # A coroutine can really be stopped: cancelling the future cancels its task on the loop.
            cancel.cancelled = True
            future.cancel()
            return timed_out(request, timeout_s, number)

    def _expire_overdue(self, now: float) -> float | None:
        """Give up on every attempt past its deadline; returns the earliest deadline still ahead."""
        earliest: float | None = None
        # A copy, because runner threads add and remove attempts meanwhile.
        for attempt in self._running.copy():
            if attempt.deadline <= now:
                self._expire(attempt)
            elif earliest is None or attempt.deadline < earliest:
                earliest = attempt.deadline
        return earliest

    def _expire(self, attempt: _Attempt) -> None:
        """Give up on one attempt past its deadline."""
        if not self._abandon(attempt):
            return
        timeout_s = self.policy.task_timeout_s
        assert timeout_s is not None
        request = attempt.request
        self._observer.abandoned(request, attempt.number, attempt.thread.name, timeout_s)
        response = timed_out(request, timeout_s, attempt.number)
        try:
            self._on_abandon(attempt.thread, partial(self._resume, attempt, response))
        except Exception:  # no thread to take over (the system refused one): answer now, without retrying
            log.exception(
                "task %s: cannot hand over the timed-out task; answering it with the timeout", request.task_id
            )
            attempt.reply(response)

    def _abandon(self, attempt: _Attempt) -> bool:
        """Claim an attempt past its deadline for the watchdog and count its thread as abandoned.

        False when it finished just now (its own thread claimed it first).
        """
        if self._running.pop(attempt, _GONE) is _GONE:
            return False
        attempt.cancelled = True
        with self._lock:
            self._abandoned += 1
            abandoned = self._abandoned
        if abandoned > self.policy.max_abandoned_threads:
            log.warning(
                "%d timed-out attempts are still running in abandoned threads (max_abandoned_threads=%d): "
                "make the handler return when current_task().cancelled is true, or use the process runner, "
                "which kills timed-out tasks",
                abandoned,
                self.policy.max_abandoned_threads,
            )
        return True

    def _resume(self, attempt: _Attempt, response: TaskResponse) -> bool:
        """The rest of a task after its attempt timed out: reply, or back off and retry here."""
        started = attempt.deadline - (self.policy.task_timeout_s or 0.0)
        if self._settle(attempt.request, attempt.reply, attempt.number, response, started, attempt.thread):
            return True
        return self.run(attempt.request, attempt.reply, attempt.number + 1)

    def close(self) -> None:
        """Stop the watchdog; abandoned attempts are left to finish on their own."""
        if self._watchdog is not None:
            self._watchdog.stop()


class _Watchdog:
    """One thread that gives up on timed attempts past their deadline.

    It never needs waking for a new attempt: an attempt that a scan did not see started
    (read the clock) at about the scan's time or later, so its deadline is no earlier
    than the next scan, which comes at most ``timeout_s`` later.
    """

    def __init__(self, engine: AttemptEngine, timeout_s: float) -> None:
        self._engine = engine
        self._timeout_s = timeout_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="runqy-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.is_set():
            now = _clock()
            earliest = self._engine._expire_overdue(now)
            next_scan = now + self._timeout_s if earliest is None else min(earliest, now + self._timeout_s)
            self._stopped.wait(next_scan - _clock())

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def settle(
    policy: RetryPolicy,
    observer: TaskObserver,
    measured: bool,
    request: TaskRequest,
    attempt: int,
    response: TaskResponse,
    started: float | None,
    thread: threading.Thread | None = None,
) -> float | None:
    """What follows an attempt that ended with ``response``: None to answer with it, else the backoff in seconds.

    The one retry rule of every in-process runner; the caller replies or waits out the
    backoff its own way (a thread sleeps, a coroutine awaits). The attempt is reported
    to ``observer``: failures always, successes only when ``measured``, so that a quick
    success costs no clock read. ``started``: when the attempt began (``perf_counter``,
    None when not measured); ``thread``: where it ran, if not in the calling thread.
    """
    final = not response.retry or attempt > policy.max_retries
    if response.error is not None or measured:
        duration_s = None if started is None else _clock() - started
        where = (thread or threading.current_thread()).name
        observe = observer.finished if final else observer.retried
        observe(request, attempt, outcome_of(response), duration_s, where, None, response.error)
    if final:
        return None
    return policy.backoff_s(attempt) if policy.retry_backoff_s > 0 else 0.0


def resolve_exception(name: str) -> type[BaseException]:
    """The exception class named ``name``: a builtin (``"ConnectionError"``) or ``"package.module.Class"``.

    Raises ``ValueError`` saying what is wrong.
    """
    module_name, _, class_name = name.rpartition(".")
    try:
        module = importlib.import_module(module_name or "builtins")
    except ImportError as exc:
        raise ValueError(f"{name!r}: cannot import module {module_name!r} ({exc})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise ValueError(f"{name!r} is not an exception class; expected a builtin or 'package.module.Class'")
    return cls


def timed_out(request: TaskRequest, timeout_s: float, attempt: int) -> TaskResponse:
    """The retryable error response of an attempt that ran out of time."""
    return TimedOutResponse(request.task_id, None, str(TaskTimeout(timeout_s, attempt)), True)
