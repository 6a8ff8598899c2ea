"""AsyncRunner: thousands of ``async def`` tasks in flight on one event loop, for handlers that wait.

A handler that calls a hosted model or another service spends its time awaiting a
reply. On the thread runner each such call holds a pool thread; here each task is a
coroutine on the worker's one event loop, so ``runner.max_concurrency`` (1000 by
default) requests are in flight with no thread per task::

    reader thread ──submit_many(chunk)──> loop.call_soon_threadsafe(_admit, chunk)   (one wake-up per chunk)
    event loop: _admit ──> a task per request, up to max_concurrency; the rest wait in the backlog
                  _serve: attempt ──> timed out? cancel it, retry at once ──> backoff (asyncio.sleep) ──> ...
                          └─> reply(response) on the loop thread ──> ProtocolChannel (the writer coalesces)

Everything on the right of the arrow runs on the loop thread, so the runner's state
(running tasks, backlog) needs no lock. ``@load`` runs on the same loop before the
ready line, so clients bound to it (HTTP sessions, database pools) serve every task.

A plain ``def`` handler is refused at start, unless it is registered with
``@task(offload=True)``: then each attempt runs in a bounded thread pool beside the
loop, and a timed-out attempt is abandoned like on the thread runner.

Batching would plug in at :meth:`AsyncRunner._admit`: a batch of requests becomes one
``_serve``-like coroutine that answers each of them, with the same admission count.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, ClassVar, Final

from runqy.aio import EventLoopThread
from runqy.app import BoundHandler, Registry, failure_response
from runqy.attempts import RetryPolicy, outcome_of, timed_out
from runqy.errors import HandlerUnsupported, RunnerClosed
from runqy.protocol import TaskRequest, TaskResponse
from runqy.runners.base import Capabilities, Reply, Runner
from runqy.runners.thread import default_max_threads

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.config.settings import RunqySettings

__all__ = ["AsyncRunner", "new_event_loop"]

log = logging.getLogger("runqy")

#: How long a cancelled attempt may take to stop before it counts as abandoned. A coroutine
#: that awaits stops within one turn of the loop; one that swallows the cancellation does not.
_CANCEL_GRACE_S: Final = 0.05
_SHUTDOWN_WHY: Final = "worker shut down before the task finished; retry it on another worker"


def new_event_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """A new event loop, uvloop's when it is installed (the ``uvloop`` extra), and the name to log for it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), f"uvloop {getattr(uvloop, '__version__', '')}".rstrip()


class _Cancellation:
    """The flag ``current_task().cancelled`` reads; set when the attempt timed out."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def is_set(self) -> bool:
        return self.cancelled


class AsyncRunner(Runner):
    """Runs up to ``max_concurrency`` tasks at once as coroutines on one event loop, with one ``@load`` context.

    For ``async def`` handlers that wait (network calls). A timed-out attempt is
    cancelled and stops at its next ``await``; its retry starts at once.
    """

    # A coroutine that never awaits (or an offloaded thread) cannot be stopped: no hard timeout.
    capabilities: ClassVar[Capabilities] = Capabilities(
        hard_timeout=False, shares_load_context=True, cpu_parallel=False
    )

    def __init__(self, max_concurrency: int = 1000, policy: RetryPolicy | None = None) -> None:
        super().__init__()
        self.max_concurrency = max_concurrency
        self.policy = policy or RetryPolicy()
        #: Which event loop serves: "uvloop X.Y" or "asyncio" (known once started).
        self.loop_name = "not started"
        self._lock = threading.Lock()  # orders submissions before the drain of close()
        self._accepting = False
        self._thread: EventLoopThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: BoundHandler | None = None
        self._offload: ThreadPoolExecutor | None = None
        # Touched only on the loop thread:
        self._running: set[asyncio.Task[None]] = set()
        self._backlog: collections.deque[tuple[TaskRequest, Reply]] = collections.deque()
        self._idle: asyncio.Future[None] | None = None  # set by close() while it waits for the tasks
        self._abandoned: set[asyncio.Future[TaskResponse]] = set()

    @classmethod
    def from_settings(cls, settings: RunqySettings) -> Self:
        return cls(settings.runner.max_concurrency, settings.retry_policy())

    @property
    def capacity(self) -> int:
        return self.max_concurrency

    @property
    def abandoned_attempts(self) -> int:
        """Timed-out attempts that did not stop when cancelled (offloaded threads, coroutines that ignore it)."""
        return len(self._abandoned)

    def start(self, registry: Registry) -> None:
        """Refuse a plain ``def`` handler not marked ``offload``, then run ``@load`` on the runner's loop."""
        if self._handler is not None:
            return
        fn = registry.handler
        if fn is not None and not inspect.iscoroutinefunction(fn) and not registry.offload:
            name = getattr(fn, "__qualname__", repr(fn))
            raise HandlerUnsupported(
                f'runner_cls = "async" runs only async def handlers, and @task {name} is a plain def; fix: '
                f'use runner_cls = "thread" for a blocking handler, make it async def, or register it with '
                f"@task(offload=True) to run it in a bounded thread pool beside the event loop"
            )
        if registry.batch_size is not None:
            raise HandlerUnsupported(
                'runner_cls = "async" does not run batch handlers (@task(batch_size=...)) yet; fix: use '
                'runner_cls = "thread" (async def batch handlers run there too), or drop batch_size'
            )
        loop, self.loop_name = new_event_loop()
        thread = EventLoopThread(loop)
        try:
            handler = registry.bind(thread)
        except BaseException:
            thread.close()
            raise
        handler.retry_exceptions = self.policy.retry_exceptions
        if not handler.is_async:
            self._offload = ThreadPoolExecutor(default_max_threads(), thread_name_prefix="runqy-offload")
        with self._lock:
            self._thread, self._loop, self._handler = thread, loop, handler
            self._accepting = True

    # --- admitting, from the reader thread ----------------------------------------------------

    def submit(self, request: TaskRequest, reply: Reply) -> None:
        self.submit_many([(request, reply)])

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        """Hand a chunk of tasks to the loop in one call; they start there, up to ``max_concurrency`` at once."""
        with self._lock:
            if not self._accepting or self._loop is None:
                raise RunnerClosed(f"AsyncRunner is not started, or already closed: {len(tasks)} task(s) cannot run")
            self._loop.call_soon_threadsafe(self._admit, tasks)

    # --- on the loop thread -------------------------------------------------------------------

    def _admit(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        for request, reply in tasks:
            if len(self._running) < self.max_concurrency:
                self._start(request, reply)
            else:
                self._backlog.append((request, reply))

    def _start(self, request: TaskRequest, reply: Reply) -> None:
        assert self._loop is not None
        # Held here: the loop keeps only weak references to its tasks.
        self._running.add(self._loop.create_task(self._serve(request, reply)))

    async def _serve(self, request: TaskRequest, reply: Reply) -> None:
        """One task, from its first attempt to its answer."""
        try:
            response = await self._attempts(request)
        except asyncio.CancelledError:  # only close() cancels a task: the worker is going away
            response = TaskResponse.failure(request.task_id, _SHUTDOWN_WHY, retry=True)
        except Exception as exc:  # a failure of runqy's own: still an answer
            log.exception("task %s could not run", request.task_id)
            response = failure_response(request, exc)
        self._finished(asyncio.current_task())
        try:
            reply(response)
        except Exception:  # a broken reply callback must not stop the loop
            log.exception("task %s: error while answering it", request.task_id)

    def _finished(self, task: asyncio.Task[object] | None) -> None:
        self._running.discard(task)
        if self._backlog:
            self._start(*self._backlog.popleft())
        elif not self._running and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def _attempts(self, request: TaskRequest) -> TaskResponse:
        """Attempts until one is final (success, plain failure, or out of retries)."""
        policy, observer, number = self.policy, self.telemetry, 1
        while True:
            started = time.perf_counter() if observer.measures else None
            response = await self._attempt(request, number)
            final = not response.retry or number > policy.max_retries
            # As in the attempt engine: failures and measured tasks are observed, a quick success costs nothing.
            if response.error is not None or started is not None:
                duration_s = None if started is None else time.perf_counter() - started
                observe = observer.finished if final else observer.retried
                where = threading.current_thread().name
                observe(request, number, outcome_of(response), duration_s, where, None, response.error)
            if final:
                return response
            if policy.retry_backoff_s > 0:
                await asyncio.sleep(policy.backoff_s(number))
            number += 1

    def _attempt(self, request: TaskRequest, number: int) -> Awaitable[TaskResponse]:
        handler = self._handler
        assert handler is not None and self._loop is not None
        if self.policy.task_timeout_s is not None:
            return self._timed_attempt(request, number, self.policy.task_timeout_s)
        if handler.is_async:
            return handler.execute_async(request, number)  # in this task: no task of its own
        return self._loop.run_in_executor(self._offload, handler.execute, request, number)

    async def _timed_attempt(self, request: TaskRequest, number: int, timeout_s: float) -> TaskResponse:
        """An attempt as a task of its own, so that it can be cancelled and the retry need not wait for it."""
        handler, loop = self._handler, self._loop
        assert handler is not None and loop is not None
        cancel = _Cancellation()
        attempt: asyncio.Future[TaskResponse]
        if handler.is_async:
            attempt = loop.create_task(handler.execute_async(request, number, cancel))
        else:
            attempt = loop.run_in_executor(self._offload, handler.execute, request, number, cancel)
        try:
            done, _ = await asyncio.wait((attempt,), timeout=timeout_s)
            if done:
                return attempt.result()
            cancel.cancelled = True
            attempt.cancel()
            if handler.is_async:
                await asyncio.wait((attempt,), timeout=_CANCEL_GRACE_S)
            if not attempt.done():
                self._abandon(attempt)
                self.telemetry.abandoned(request, number, threading.current_thread().name, timeout_s)
            log.warning("task %s: attempt %d timed out after %gs; cancelled", request.task_id, number, timeout_s)
            return timed_out(request, timeout_s, number)
        finally:
            if not attempt.done():  # the task itself was cancelled (close()): so is its attempt
                attempt.cancel()

    def _abandon(self, attempt: asyncio.Future[TaskResponse]) -> None:
        log.warning(
            "a timed-out attempt did not stop when cancelled (%s); it runs on, its result dropped",
            "a thread cannot be stopped" if self._offload is not None else "the coroutine ignores cancellation",
        )
        self._abandoned.add(attempt)
        attempt.add_done_callback(self._abandoned.discard)

    async def _drain(self, timeout_s: float | None) -> None:
        """Wait up to ``timeout_s`` for every task; then answer the rest ``retry: true`` and cancel them."""
        if self._running or self._backlog:
            assert self._loop is not None
            self._idle = self._loop.create_future()
            await asyncio.wait((self._idle,), timeout=timeout_s)
        while self._backlog:
            request, reply = self._backlog.popleft()
            reply(TaskResponse.failure(request.task_id, _SHUTDOWN_WHY, retry=True))
        if self._running:
            log.warning("cancelling %d task(s) still running after %gs", len(self._running), timeout_s or 0)
            running = list(self._running)
            for task in running:
                task.cancel()  # each answers itself retry: true
            await asyncio.wait(running, timeout=_CANCEL_GRACE_S)

    # --- closing ------------------------------------------------------------------------------

    def close(self, timeout_s: float | None = None) -> None:
        with self._lock:
            thread, handler = self._thread, self._handler
            if thread is None or handler is None or not self._accepting:
                return
            self._accepting = False
        # Queued behind every chunk already handed to the loop: none of them is missed.
        thread.run(self._drain(timeout_s))
        if self._offload is not None:
            self._offload.shutdown(wait=False, cancel_futures=True)
        handler.close()  # stops the loop and its thread
        with self._lock:
            self._thread = self._loop = self._handler = self._offload = None

    def __repr__(self) -> str:
        return f"<AsyncRunner capacity={self.max_concurrency} loop={self.loop_name}>"
