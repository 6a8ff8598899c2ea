"""ThreadRunner: many tasks at once in this process, sharing one ``@load`` context.

For handlers that wait (network, disk) or release the GIL (numpy, torch, llama.cpp
inference, GPU calls). :class:`ThreadPool` is the machinery, shared with the
sequential runner (a pool of one) and with the threads inside hybrid children::

    submit ──> work queue ──> pool thread: AttemptEngine.run ──> reply
                                  ▲          │ attempt timed out (watchdog)
                                  └──────────┴─ fresh thread: the task's retry first,
                                                then the work queue; the stuck thread
                                                is abandoned and stops when it returns

When the serving loop hands it stdin (:meth:`ThreadPool.host`), the work queue also
carries the read turn: the thread that takes it reads and runs what it read itself,
until a task runs long (see :mod:`runqy.runners._pool_reading`).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Final

from runqy.app import BoundHandler, Registry
from runqy.attempts import AttemptEngine, Continuation, RetryPolicy
from runqy.batch_attempts import BatchAttemptEngine, BatchItem
from runqy.batching import gather
from runqy.errors import RunnerClosed
from runqy.inline import HostedStdin, StdinHost
from runqy.observe.telemetry import TaskObserver
from runqy.protocol import TaskRequest, TaskResponse
from runqy.runners._pool_reading import READ_TURN, ReadTurn, _ReadTurnToken
from runqy.runners.base import Capabilities, Reply, Runner

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.config.settings import RunqySettings

__all__ = ["PooledRunner", "ThreadPool", "ThreadRunner", "default_max_threads"]

log = logging.getLogger("runqy")

#: A queued task: (request, reply, number of its first attempt here, when it was queued).
_Work = tuple[TaskRequest, Reply, int, float]

#: The default pool never exceeds this, however many cores: beyond it threads mostly wait for the GIL.
_MAX_DEFAULT_THREADS: Final = 32


def default_max_threads() -> int:
    """``min(32, cpu_count + 4)``: enough threads for waiting tasks, few enough for the GIL."""
    return min(_MAX_DEFAULT_THREADS, (os.cpu_count() or 1) + 4)


class ThreadPool:
    """Up to ``max_threads`` threads that take tasks from one queue and run them through one engine.

    Threads start on demand, when a task arrives and none is idle, so trivial tasks
    stay on the one or two threads already running. A thread whose attempt timed out
    is replaced at once, so the pool keeps ``max_threads`` serving threads.
    """

    #: The thread holding the read turn runs what it read one task after another (see ReadTurn).
    runs_what_it_reads = True

    def __init__(
        self,
        handler: BoundHandler,
        policy: RetryPolicy,
        max_threads: int,
        name: str = "runqy-thread",
        observer: TaskObserver | None = None,
    ) -> None:
        self.max_threads = max_threads
        self._batch = handler.batch
        engine_class = AttemptEngine if self._batch is None else BatchAttemptEngine
        self.engine = engine_class(handler, policy, on_abandon=self._replace, observer=observer)
        if isinstance(self.engine, BatchAttemptEngine):
            self.engine.requeue = self.submit_attempts  # retries join the batches that form next
        self._name = name
        # (request, reply, number of its first attempt here, when it was queued); READ_TURN
        # while the pool hosts reading (see host()); None stops the threads.
        self._work: queue.SimpleQueue[_Work | _ReadTurnToken | None] = queue.SimpleQueue()
        #: Reading stdin, while the serving loop hands it to the pool (see host()).
        self._turn: ReadTurn | None = None
        # Threads of a batch handler take and fill a batch one at a time, so that what is
        # waiting goes into one full batch rather than being split between free threads.
        self._take_lock = threading.Lock()
        # One token per thread that finished a task and went back to the queue; a
        # submit that takes one starts no thread. Bounded: once full, the pool stops growing.
        self._idle: collections.deque[None] = collections.deque(maxlen=max_threads)
        self._lock = threading.Lock()
        self._all_stopped = threading.Condition(self._lock)
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def submit(self, request: TaskRequest, reply: Reply, attempt: int = 1) -> None:
        """Queue a task; ``reply`` is called exactly once with its final response.

        ``attempt`` numbers its first attempt here (a hybrid child runs attempt N of a
        task whose earlier attempts ran elsewhere). Raises :class:`RunnerClosed` after
        :meth:`close`, and ``RuntimeError`` when the pool has no thread and the system
        refuses to start one.
        """
        with self._lock:
            self._queue(request, reply, attempt)

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        """Queue several tasks with one lock acquisition; each may go to a different thread."""
        with self._lock:
            if self._closed:
                raise RunnerClosed(f"{len(tasks)} task(s) submitted after the runner was closed")
            put, threads, max_threads = self._work.put, self._threads, self.max_threads
            arrived = time.monotonic()  # once per chunk: its tasks arrived together
            for request, reply in tasks:  # the serving loop's hot path: _queue() inlined
                if len(threads) < max_threads:
                    self._maybe_grow()
                put((request, reply, 1, arrived))

    def submit_attempts(self, items: list[BatchItem]) -> None:
        """Queue tasks with the numbers of their first attempts here, with one lock acquisition."""
        with self._lock:
            for request, reply, attempt in items:
                self._queue(request, reply, attempt)

    def _queue(self, request: TaskRequest, reply: Reply, attempt: int) -> None:
        # Called with the lock held, so that no task is queued behind the sentinel of close().
        if self._closed:
            raise RunnerClosed(f"task {request.task_id} submitted after the runner was closed")
        if len(self._threads) < self.max_threads:
            self._maybe_grow()
        self._work.put((request, reply, attempt, time.monotonic()))

    def _maybe_grow(self) -> None:
        try:
            self._idle.pop()
            return  # an idle thread will take the task
        except IndexError:
            pass
        try:
            self._start_thread(None)
        except RuntimeError:
            if not self._threads:
                raise
            log.warning("cannot start another thread; %d threads serve on", len(self._threads), exc_info=True)

    def _start_thread(self, continuation: Continuation | None) -> None:
        # Daemon threads: a handler stuck for good must not keep the process alive at exit.
        thread = threading.Thread(target=self._serve, args=(continuation,), name=self._name, daemon=True)
        thread.start()  # before counting it: a thread that failed to start must not be waited for
        self._threads.add(thread)  # the lock is held: the thread cannot discard itself before this

    def _replace(self, abandoned: threading.Thread, continuation: Continuation) -> None:
        """Called by the engine's watchdog: ``abandoned`` is stuck; a fresh thread finishes its task."""
        with self._lock:
            self._threads.discard(abandoned)
            self._start_thread(continuation)

    def host(self, stdin: HostedStdin) -> None:
        """Read stdin with ``stdin.read`` on the pool's threads, one at a time, until :meth:`stop_hosting`.

        The thread that reads a chunk runs its tasks, unless one runs long: see
        :mod:`runqy.runners._pool_reading`. Not for a batch handler, whose threads take batches.
        """
        if self._batch is not None:
            raise ValueError("a pool of a batch handler cannot host reading: its threads take batches")
        with self._lock:
            if self._closed:
                raise RunnerClosed("cannot read stdin: the runner was closed")
            if self._turn is None:
                self._turn = ReadTurn(self._lock, self._hand_over)
            if self._turn.host(stdin.read):
                self._put_locked(READ_TURN)

    def stop_hosting(self) -> None:
        """Stop reading stdin; queued and running tasks go on."""
        if self._turn is not None:
            self._turn.stop_hosting()

    def _hand_over(self, tasks: list[tuple[TaskRequest, Reply]]) -> bool:
        # Called by the read turn with the lock held; after close() a thread may be gone.
        if self._closed:
            return False
        arrived = time.monotonic()
        for request, reply in tasks:
            self._put_locked((request, reply, 1, arrived))
        self._put_locked(READ_TURN)
        return True

    def _put_locked(self, item: _Work | _ReadTurnToken) -> None:
        if len(self._threads) < self.max_threads:
            self._maybe_grow()
        self._work.put(item)

    def _run_held(self, request: TaskRequest, reply: Reply) -> bool:
        """Run a task read by this thread's read turn (see :meth:`_serve` for the exceptions)."""
        try:
            return self.engine.run(request, reply)
        except Exception:
            log.exception("task %s: error while answering it", request.task_id)
            return True

    def _serve(self, continuation: Continuation | None) -> None:
        if continuation is not None and not _guarded(continuation):
            return  # abandoned in turn, and replaced
        if self._batch is not None:
            self._serve_batches()
            return
        run, get, idle = self.engine.run, self._work.get, self._idle.append
        threads, max_threads = self._threads, self.max_threads
        while (item := get()) is not None:
            if isinstance(item, _ReadTurnToken):
                assert self._turn is not None
                if not self._turn.hold(self._run_held):
                    return  # abandoned: a fresh thread has taken this one's place
                continue
            request, reply, attempt, _ = item
            if len(threads) < max_threads:
                # While the pool may still grow, the thread counts itself idle before it
                # replies: the reply often brings the next task at once (the Go worker
                # keeps N in flight), and that task must find this thread, not start one.
                reply = partial(_idle_then_reply, idle, reply)
            try:
                if not run(request, reply, attempt):
                    return  # abandoned: a fresh thread has taken this one's place
            except Exception:  # a broken reply callback must not cost the pool a thread, nor hang close()
                log.exception("task %s: error while answering it", request.task_id)
        self._stop_serving()

    def _stop_serving(self) -> None:
        self._work.put(None)  # wake the next thread: every thread stops on the same sentinel
        with self._lock:
            self._threads.discard(threading.current_thread())
            if not self._threads:
                self._all_stopped.notify_all()

    def _serve_batches(self) -> None:
        """The serving loop for a batch handler: take what waits (see :mod:`runqy.batching`), call, repeat."""
        assert self._batch is not None and isinstance(self.engine, BatchAttemptEngine)
        spec, engine, work = self._batch, self.engine, self._work

        def take(timeout_s: float) -> _Work | None:
            if timeout_s:
                item = work.get(timeout=timeout_s)
            else:
                # Tasks submitted together are put under this lock: taken under it too, a call
                # sees all of them or none (a hybrid child gets a batch formed by its parent).
                with self._lock:
                    item = work.get_nowait()
            return None if isinstance(item, _ReadTurnToken) else item

        while True:
            with self._take_lock:
                first = work.get()
                if first is None or isinstance(first, _ReadTurnToken):  # no turn is ever queued here (see host())
                    break
                batch, stop = gather(spec, first, first[3], take)
            items: list[BatchItem] = [(request, reply, attempt) for request, reply, attempt, _ in batch]
            if not engine.run_batch(items):
                return  # abandoned: a fresh thread has taken this one's place
            if stop:
                break
            if len(self._threads) < self.max_threads:
                self._idle.append(None)  # back to the queue: the next task need not start a thread
        self._stop_serving()

    def close(self, timeout_s: float | None = None) -> bool:
        """Finish the queued tasks, then stop the threads; False if that took longer than ``timeout_s``."""
        self.stop_hosting()  # a thread waiting on stdin would never take the sentinel
        with self._lock:
            if not self._closed:
                self._closed = True
                self._work.put(None)
            stopped = self._all_stopped.wait_for(lambda: not self._threads, timeout_s)
            turn, self._turn = (self._turn, None) if stopped else (None, self._turn)
        if turn is not None:  # else a thread left behind could still poll its fds
            turn.close()
        self.engine.close()
        return stopped

    @property
    def threads(self) -> int:
        """Threads serving now (abandoned ones excluded)."""
        return len(self._threads)


def _guarded(continuation: Continuation) -> bool:
    try:
        return continuation()
    except Exception:  # as in ThreadPool._serve
        log.exception("error while answering a task after a timeout")
        return True


def _idle_then_reply(idle: Callable[[None], None], reply: Reply, response: TaskResponse) -> None:
    idle(None)
    reply(response)


class PooledRunner(Runner):
    """A runner whose tasks run on one :class:`ThreadPool` in this process: the sequential and thread runners.

    One ``@load`` context, shared by every thread. A timed-out attempt cannot be
    stopped: it is abandoned (see :mod:`runqy.attempts`).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        hard_timeout=False, shares_load_context=True, cpu_parallel=False
    )
    #: Names the pool's threads.
    thread_name: ClassVar[str] = "runqy-thread"

    def __init__(self, max_threads: int, policy: RetryPolicy | None = None) -> None:
        super().__init__()
        self.max_threads = max_threads
        self.policy = policy or RetryPolicy()
        self._handler: BoundHandler | None = None
        self._pool: ThreadPool | None = None

    @property
    def capacity(self) -> int:
        return self.max_threads

    def start(self, registry: Registry) -> None:
        if self._pool is not None:
            return
        self._handler = self._bind(registry)
        self._pool = ThreadPool(self._handler, self.policy, self.max_threads, self.thread_name, self.telemetry)

    def _bind(self, registry: Registry) -> BoundHandler:
        """Run ``@load`` and bind the handler to its result; here, in the calling thread."""
        return registry.bind()

    def submit(self, request: TaskRequest, reply: Reply) -> None:
        self._started().submit(request, reply)

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        self._started().submit_many(tasks)

    def _started(self) -> ThreadPool:
        if self._pool is None:
            raise RunnerClosed(f"{type(self).__name__} is not started, or already closed: tasks cannot run")
        return self._pool

    @property
    def abandoned_attempts(self) -> int:
        return self._pool.engine.abandoned if self._pool is not None else 0

    def close(self, timeout_s: float | None = None) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if not pool.close(timeout_s):
            log.warning("%d task(s) still running after %gs; leaving their threads behind", pool.threads, timeout_s)
        if self._handler is not None:
            self._handler.close()


class ThreadRunner(PooledRunner):
    """Runs up to ``max_threads`` tasks at once on one shared thread pool, with one shared ``@load`` context.

    Handlers must be thread-safe. Use the process runner for hard timeouts, or for
    Python code that holds the GIL.
    """

    def __init__(self, max_threads: int | None = None, policy: RetryPolicy | None = None) -> None:
        super().__init__(max_threads or default_max_threads(), policy)

    @classmethod
    def from_settings(cls, settings: RunqySettings) -> Self:
        """``runner.max_threads`` if set, else ``python_workers``, else :func:`default_max_threads`."""
        return cls(settings.runner.max_threads or settings.python_workers, settings.retry_policy())

    def stdin_host(self) -> StdinHost | None:
        """The pool, which reads stdin in turns between tasks (not for a batch handler: its threads take batches)."""
        pool = self._pool
        return pool if pool is not None and pool.engine.handler.batch is None else None
