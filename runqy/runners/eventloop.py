"""AsyncRunner: thousands of ``async def`` tasks in flight on one event loop, for handlers that wait.

A handler that calls a hosted model or another service spends its time awaiting a
reply. On the thread runner each such call holds a pool thread; here each task is a
coroutine on the worker's one event loop, so ``runner.max_concurrency`` (1000 by
default) requests are in flight with no thread per task::

    reader thread ──submit_many(chunk)──> loop.call_soon_threadsafe(_admit, chunk)   (one wake-up per chunk)
    event loop: _admit ──> a task per request, up to max_concurrency; the rest wait in the backlog
                  _serve: attempt ──> timed out? cancel it, retry at once ──> backoff (asyncio.sleep) ──> ...
                          └─> reply(response) on the loop thread ──> ProtocolChannel (the writer coalesces)
    batch handler: _admit ──> WaitingBatches ──> a free slot takes a batch (BatchSpec) ──> _serve_batch:
                  one call, one slot ──> each task answered, or back in the queue after its backoff

Everything on the right of the arrow runs on the loop thread, so the runner's state
(running tasks, backlog) needs no lock. ``@load`` runs on the same loop before the
ready line, so clients bound to it (HTTP sessions, database pools) serve every task.

A plain ``def`` handler is refused at start, unless it is registered with
``@task(offload=True)``: then each attempt runs in a bounded thread pool beside the
loop, and a timed-out attempt is abandoned like on the thread runner.

A batch handler's calls each take one of the ``max_concurrency`` slots, whatever their
size (for an offloaded one, at most one per pool thread, so that batches form while
the threads are busy rather than queueing in the pool one task each). Batches form by
the rule of every runner (:mod:`runqy.batching`), in :mod:`runqy.runners._waiting_batches`.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from runqy.aio import EventLoopThread
from runqy.app import BoundHandler, Registry, failure_response
from runqy.attempts import RetryPolicy, settle, timed_out
from runqy.batch_attempts import BatchItem
from runqy.errors import HandlerUnsupported, RunnerClosed
from runqy.protocol import TaskRequest, TaskResponse
from runqy.runners._waiting_batches import WaitingBatches
from runqy.runners.base import Capabilities, Reply, Runner
from runqy.runners.thread import default_max_threads

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.config.settings import RunqySettings

__all__ = ["AsyncRunner", "new_event_loop"]

log = logging.getLogger("runqy")

T = TypeVar("T")

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
    cancelled and stops at its next ``await``; its retry starts at once. For a batch
    handler, ``max_concurrency`` bounds the calls at once, each of up to ``batch_size`` tasks.
    """

    # A coroutine that never awaits (or an offloaded thread) cannot be stopped: no hard timeout.
    # The loop thread writes a few answers in place: a small write to a pipe the Go worker
    # keeps reading costs less than waking the writer thread for each.
    answers_in_place: ClassVar[bool] = True
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
        #: Coroutines at once: ``max_concurrency``, or fewer for an offloaded batch handler.
        self._slots = max_concurrency
        # Touched only on the loop thread:
        self._running: set[asyncio.Task[None]] = set()  # a task, or a batch call: one slot each
        self._backlog: collections.deque[tuple[TaskRequest, Reply]] = collections.deque()
        self._batches: WaitingBatches | None = None  # for a batch handler, instead of the backlog
        self._idle: asyncio.Future[None] | None = None  # set by close() while it waits for the tasks
        #: Timed-out calls still running: coroutines that ignored cancellation, offloaded threads.
        self._abandoned: set[asyncio.Future[Any] | Future[Any]] = set()

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
        loop, self.loop_name = new_event_loop()
        thread = EventLoopThread(loop)
        try:
            handler = registry.bind(thread)
        except BaseException:
            thread.close()
            raise
        handler.retry_exceptions = self.policy.retry_exceptions
        offload_threads = default_max_threads()
        if not handler.is_async:
            self._offload = ThreadPoolExecutor(offload_threads, thread_name_prefix="runqy-offload")
        if handler.batch is not None:
            self._batches = WaitingBatches(handler.batch, loop, self._fill)
            if self._offload is not None:  # a call waiting for a pool thread would hold its tasks from later batches
                self._slots = min(self.max_concurrency, offload_threads)
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
        if self._batches is not None:
            self._batches.put([(request, reply, 1) for request, reply in tasks], time.monotonic())
            self._fill()
            return
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
        _answer(request, reply, response)

    def _finished(self, task: asyncio.Task[object] | None) -> None:
        """A slot is free: start what waits for one, or tell a waiting close() that all is done."""
        self._running.discard(task)
        if self._batches is not None:
            self._fill()
        elif self._backlog:
            self._start(*self._backlog.popleft())
        idle = self._idle
        if idle is not None and not idle.done() and not self._running and not self._backlog and not self._batches:
            idle.set_result(None)

    async def _attempts(self, request: TaskRequest) -> TaskResponse:
        """Attempts until one is final (success, plain failure, or out of retries)."""
        policy, observer, number = self.policy, self.telemetry, 1
        measured = observer.measures
        while True:
            started = time.perf_counter() if measured else None
            response = await self._attempt(request, number)
            backoff_s = settle(policy, observer, measured, request, number, response, started)
            if backoff_s is None:
                return response
            if backoff_s > 0:
                await asyncio.sleep(backoff_s)
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
        in_thread = None
        if handler.is_async:
            attempt = loop.create_task(handler.execute_async(request, number, cancel))
        else:
            attempt, in_thread = self._in_thread(handler.execute, request, number, cancel)
        response = await self._within(timeout_s, attempt, cancel, [(request, number)], in_thread)
        if response is None:
            log.warning("task %s: attempt %d timed out after %gs; cancelled", request.task_id, number, timeout_s)
            return timed_out(request, timeout_s, number)
        return response

    async def _within(
        self,
        timeout_s: float,
        call: asyncio.Future[T],
        cancel: _Cancellation,
        tasks: list[tuple[TaskRequest, int]],
        in_thread: Future[T] | None = None,
    ) -> T | None:
        """The result of ``call`` (the attempts ``tasks``), or None when it overran: then it is cancelled.

        ``in_thread``: the offload pool's future of a call that runs in a thread.
        """
        try:
            done, _ = await asyncio.wait((call,), timeout=timeout_s)
            if done:
                return call.result()
            cancel.cancelled = True
            call.cancel()
            if isinstance(call, asyncio.Task):  # a coroutine stops at its next await; a thread does not
                await asyncio.wait((call,), timeout=_CANCEL_GRACE_S)
            # Cancelling the loop's wrapper of an offloaded call marks it done while its thread runs on.
            running: asyncio.Future[Any] | Future[Any] = call if in_thread is None else in_thread
            if not running.done():
                self._abandon(running, tasks, timeout_s)
            return None
        finally:
            if not call.done():  # the task itself was cancelled (close()): so is its call
                call.cancel()

    def _in_thread(self, function: Callable[..., T], *args: Any) -> tuple[asyncio.Future[T], Future[T]]:
        """``function(*args)`` in the offload pool: a future to await on the loop, and the pool's own.

        Only the pool's future tells whether the thread still runs once the call is cancelled.
        """
        assert self._offload is not None
        in_thread = self._offload.submit(function, *args)
        return asyncio.wrap_future(in_thread), in_thread

    def _abandon(
        self, call: asyncio.Future[Any] | Future[Any], tasks: list[tuple[TaskRequest, int]], timeout_s: float
    ) -> None:
        log.warning(
            "a timed-out call did not stop when cancelled (%s); it runs on, its result dropped",
            "a thread cannot be stopped" if self._offload is not None else "the coroutine ignores cancellation",
        )
        self._abandoned.add(call)
        call.add_done_callback(self._abandoned.discard)
        where = threading.current_thread().name
        for request, number in tasks:
            self.telemetry.abandoned(request, number, where, timeout_s)

    # --- batch handlers, on the loop thread ---------------------------------------------------

    def _fill(self) -> None:
        """Start a batch call in every free slot while :class:`WaitingBatches` has a batch to take now."""
        assert self._batches is not None and self._loop is not None
        running, take, create_task = self._running, self._batches.take, self._loop.create_task
        while len(running) < self._slots and (items := take()):
            running.add(create_task(self._serve_batch(items)))

    async def _serve_batch(self, items: list[BatchItem]) -> None:
        """One batch call in one slot: each of its tasks is answered, or queued again for its next attempt."""
        assert self._batches is not None
        observer = self.telemetry
        measured = observer.measures
        started = time.perf_counter() if measured else None
        observer.batch_called(len(items))
        try:
            responses = await self._call_batch([(request, number) for request, _, number in items])
        except asyncio.CancelledError:  # only close() cancels a call: the worker is going away
            self._finished(asyncio.current_task())
            for request, reply, _ in items:
                _answer(request, reply, TaskResponse.failure(request.task_id, _SHUTDOWN_WHY, retry=True))
            return
        except Exception as exc:  # a failure of runqy's own: still an answer per task
            log.exception("a batch call of %d task(s) could not run", len(items))
            responses = [failure_response(request, exc) for request, _, _ in items]
        # Retries are queued before the slot is freed, so that the slot may take them along.
        for (request, reply, number), response in zip(items, responses, strict=True):
            backoff_s = settle(self.policy, observer, measured, request, number, response, started)
            if backoff_s is None:
                _answer(request, reply, response)
            else:
                self._batches.retry_later((request, reply, number + 1), backoff_s)
        self._finished(asyncio.current_task())

    async def _call_batch(self, tasks: list[tuple[TaskRequest, int]]) -> list[TaskResponse]:
        """One call of the batch handler, bounded by ``task_timeout_s``: one response per task."""
        handler, loop, timeout_s = self._handler, self._loop, self.policy.task_timeout_s
        assert handler is not None and loop is not None
        cancel = _Cancellation()
        call: asyncio.Future[list[TaskResponse]]
        in_thread = None
        if handler.is_async:
            if timeout_s is None:
                return await handler.execute_batch_async(tasks)  # in this task: no task of its own
            call = loop.create_task(handler.execute_batch_async(tasks, cancel))
        else:
            call, in_thread = self._in_thread(handler.execute_batch, tasks, cancel)
            if timeout_s is None:
                return await call
        responses = await self._within(timeout_s, call, cancel, tasks, in_thread)
        if responses is None:
            log.warning("a batch call of %d task(s) timed out after %gs; cancelled", len(tasks), timeout_s)
            return [timed_out(request, timeout_s, number) for request, number in tasks]
        return responses

    async def _drain(self, timeout_s: float | None) -> None:
        """Wait up to ``timeout_s`` for every task; then answer the rest ``retry: true`` and cancel them."""
        if self._batches is not None:
            self._batches.flushing = True  # no task will join a short batch any more: it goes out now
            self._fill()
        if self._running or self._backlog or self._batches:
            assert self._loop is not None
            self._idle = self._loop.create_future()
            await asyncio.wait((self._idle,), timeout=timeout_s)
        while self._backlog:
            request, reply = self._backlog.popleft()
            reply(TaskResponse.failure(request.task_id, _SHUTDOWN_WHY, retry=True))
        for request, reply, _ in self._batches.close() if self._batches is not None else ():
            _answer(request, reply, TaskResponse.failure(request.task_id, _SHUTDOWN_WHY, retry=True))
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


def _answer(request: TaskRequest, reply: Reply, response: TaskResponse) -> None:
    try:
        reply(response)
    except Exception:  # a broken reply callback must not stop the loop, nor cost other tasks their answers
        log.exception("task %s: error while answering it", request.task_id)
