"""PersistentProcessRunner: tasks run in long-lived child processes, which are killed and replaced when they misbehave.

Data flow::

  serving loop              parent: this module                          children: _child.py
  ------------              -------------------                          -------------------
  submit(request, reply)
        |
        v
      Job --> pending --dispatch to the least-loaded ready child--> pipe 0 --> child 0 (own session)
                 ^                                                 pipe 1 --> child 1   @load once,
                 | local retry (backoff)                                ...            then tasks
                 |                                                                        |
  reply(response) <-- finish <-- supervisor thread <-- DONE(seq, attempt, result) --------+
                                  select() over every pipe, every process sentinel, a wake pipe:
                                  - deadline passed: kill the child's process group (SIGTERM,
                                    grace, SIGKILL), answer or retry the task, spawn a replacement
                                  - child exited: fail its in-flight task (exit code / signal),
                                    retry it or answer it as poison, respawn; crash loop -> on_fatal
                                  - recycling after max_tasks_per_child or max_memory_per_child_mb
                                memory monitor thread: psutil RSS of each child + its descendants

Each child has its own pipe: one queue shared by all children would starve them all
once a child killed while holding the queue's lock. Every attempt carries a sequence
number, so a late answer (from a child that was given up on) is recognised and dropped.
"""

from __future__ import annotations

import atexit
import collections
import enum
import heapq
import itertools
import logging
import math
import multiprocessing
import os
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final

import psutil

from runqy.app import Registry
from runqy.attempts import RetryPolicy
from runqy.errors import LoadFailed, RunnerBroken, TaskTimeout, WorkerCrashed
from runqy.protocol import TaskRequest, TaskResponse
from runqy.runners._child import DONE, LOAD_FAILED, READY, RETIRE, ChildSpec
from runqy.runners._children import KILL_GRACE_S, ChildProcess, ChildState, Job, watch_memory
from runqy.runners._crashes import CrashLedger
from runqy.runners._supervisor import ChildSupervisor, Replies
from runqy.runners.base import Capabilities, Reply, Runner

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.settings import RunqySettings

__all__ = ["PersistentProcessRunner", "default_num_processes"]

log = logging.getLogger("runqy")

_MIB: Final = 2**20
#: How often the memory monitor measures the children while they run.
_MEMORY_CHECK_INTERVAL_S: Final = 0.2


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


def default_num_processes() -> int:
    """Physical cores: hyper-threads do not run a second GIL-holding process any faster."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class PersistentProcessRunner(Runner):
    """Runs each task in one of ``num_processes`` persistent child processes, one task per child at a time.

    Every child imports the worker module and runs ``@load`` itself. A task that
    overruns ``task_timeout_s`` has its child's whole process group killed; a child
    that dies fails only its own task; both are replaced at once.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(hard_timeout=True, shares_load_context=False, cpu_parallel=True)

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        num_processes: int | None = None,
        start_method: str = "spawn",
        max_tasks_per_child: int | None = None,
        max_memory_per_child_mb: int | None = None,
        crash_limit: int = 5,
        crash_window_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.policy = policy or RetryPolicy()
        self.num_processes = num_processes or default_num_processes()
        self.start_method = start_method
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child_mb = max_memory_per_child_mb
        #: ``crash_limit`` unexpected child exits within ``crash_window_s`` break the runner.
        self._crashes = CrashLedger(crash_limit, crash_window_s)
        # An explicit context: the start method of the user's own multiprocessing stays untouched.
        self._ctx = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state = _State.NEW
        self._pending: collections.deque[Job] = collections.deque()
        self._retries: list[tuple[float, int, Job]] = []
        self._seq = itertools.count(1)
        self._start_error: str | None = None
        self._broken: RunnerBroken | None = None
        self._fatal_to_report: RunnerBroken | None = None
        self._supervisor: ChildSupervisor | None = None
        self._children: list[ChildProcess] = []
        self._monitor: threading.Thread | None = None
        self._closing = threading.Event()

    @classmethod
    def from_settings(cls, settings: RunqySettings) -> Self:
        return cls(settings.retry_policy(), **cls._options(settings))

    @classmethod
    def _options(cls, settings: RunqySettings) -> dict[str, Any]:
        return {
            "num_processes": settings.runner.num_processes,
            "start_method": settings.runner.start_method,
            "max_tasks_per_child": settings.max_tasks_per_child,
            "max_memory_per_child_mb": settings.max_memory_per_child_mb,
        }

    # --- the seam the hybrid runner overrides -----------------------------------------------

    @property
    def slots_per_child(self) -> int:
        """Tasks one child runs at once."""
        return 1

    def _child_threads(self) -> int:
        return 0  # run tasks inline in the child's main thread

    def _attempt_deadline(self, now: float) -> float | None:
        """When an attempt started now is given up by killing its child."""
        timeout_s = self.policy.task_timeout_s
        return None if timeout_s is None else now + timeout_s

    # --- Runner API --------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.num_processes * self.slots_per_child

    def start(self, registry: Registry) -> None:
        if self._state is not _State.NEW:
            return
        spec = ChildSpec.for_registry(
            registry,
            threads=self._child_threads(),
            policy=self.policy,
            report_rss=self.max_memory_per_child_mb is not None,
            log_level=log.getEffectiveLevel(),
        )
        if self.start_method == "forkserver":
            # Children fork from a server that already imported runqy and the worker module.
            preload = ["runqy.runners._child"] + [ref.module for ref in (spec.handler,) if ref.module != "__main__"]
            self._ctx.set_forkserver_preload(preload)
        self._state = _State.STARTING
        self._supervisor = ChildSupervisor(self._ctx, spec, self._lock, self, lambda exc: self.on_fatal(exc))
        self._children = self._supervisor.children
        self._supervisor.start()
        atexit.register(self._supervisor.kill_all)
        with self._lock:
            self._changed.wait_for(lambda: self._start_error is not None or self._ready_count() >= self.num_processes)
            error = self._start_error
            if error is None:
                self._state = _State.RUNNING
        if error is not None:
            self.close(timeout_s=0)
            raise LoadFailed(error)
        if self.max_memory_per_child_mb is not None:
            args = (self.max_memory_per_child_mb * _MIB, self._memory_watched, self._over_memory, self._closing)
            self._monitor = threading.Thread(
                target=watch_memory, args=(*args, _MEMORY_CHECK_INTERVAL_S), name="runqy-memory", daemon=True
            )
            self._monitor.start()
        log.info("%d child process(es) ready: %s", len(self._children), " ".join(str(c.pid) for c in self._children))

    def submit(self, request: TaskRequest, reply: Reply) -> None:
        self.submit_many([(request, reply)])

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        refused: Replies = []
        with self._lock:
            for request, reply in tasks:
                refusal = self._refusal_locked(request)
                if refusal is None:
                    self._pending.append(Job(request, reply))
                else:
                    refused.append((reply, refusal))
            self._dispatch_locked()
        for reply, response in refused:
            reply(response)

    def close(self, timeout_s: float | None = None) -> None:
        with self._lock:
            if self._state in (_State.NEW, _State.CLOSED):
                return
            if self._state is _State.RUNNING:
                self._state = _State.DRAINING
                self._changed.wait_for(self._idle_locked, timeout_s)
            replies = self._close_locked()
        self._closing.set()
        for reply, response in replies:
            reply(response)
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.join(KILL_GRACE_S + 2.0)
            atexit.unregister(supervisor.kill_all)
            supervisor.kill_all()  # whatever did not exit in time
        if self._monitor is not None:
            self._monitor.join()

    @property
    def abandoned_attempts(self) -> int:
        """Timed-out attempts still running in threads of the children (hybrid); they die with their child."""
        with self._lock:
            return sum(child.abandoned for child in self._children)

    @property
    def child_pids(self) -> list[int]:
        """Pids of the live children (for monitoring and tests)."""
        with self._lock:
            return [c.pid for c in self._children if c.state is not ChildState.DOOMED]

    # --- start-up and shutdown ---------------------------------------------------------------

    def _ready_count(self) -> int:
        return sum(child.state is ChildState.READY for child in self._children)

    def _idle_locked(self) -> bool:
        return not self._pending and not self._retries and not any(c.inflight for c in self._children)

    def _close_locked(self) -> Replies:
        self._state = _State.CLOSED
        assert self._supervisor is not None
        self._supervisor.closing = True
        self._supervisor.wake()
        jobs = [*self._pending, *(job for _, _, job in self._retries)]
        self._pending.clear()
        self._retries.clear()
        for child in self._children:
            busy = bool(child.inflight)
            jobs += child.inflight.values()
            child.inflight.clear()
            if child.state is not ChildState.DOOMED:
                child.kill("runner closed") if busy else child.stop("runner closed")
        replies: Replies = []
        for job in jobs:
            why = "the worker shut down before the task finished; retry it"
            self._finish_locked(job, TaskResponse.failure(job.request.task_id, why, retry=True), replies)
        return replies

    # --- events from the supervisor thread (SupervisedEvents) --------------------------------

    def wanted_children_locked(self) -> int:
        if self._state is _State.CLOSED or self._broken is not None or self._start_error is not None:
            return 0
        return self.num_processes

    def on_message_locked(self, child: ChildProcess, message: Any, replies: Replies) -> None:
        tag = message[0]
        if tag == DONE:
            _, seq, attempt, task_id, result, error, retry, rss, child.abandoned = message
            job = child.inflight.pop(seq, None)
            if job is None or job.attempt != attempt:
                log.debug("dropping a late answer for task %s attempt %d from child %d", task_id, attempt, child.pid)
                return
            child.tasks_done += 1
            if error is None:
                self._crashes.forget(task_id)
            self._retry_or_finish_locked(job, TaskResponse(task_id, result, error, retry), replies)
            self._after_task_locked(child, rss)
        elif tag == READY:
            if child.state is ChildState.STARTING:
                child.state = ChildState.READY
                log.debug("child process %d ready in %.0f ms", child.pid, (time.monotonic() - child.started_at) * 1000)
            self._changed.notify_all()
        elif tag == LOAD_FAILED:
            if self._state is _State.STARTING:
                self._start_error = self._start_error or str(message[1])
                self._changed.notify_all()
            else:
                log.error("a replacement child process failed to load: %s", message[1])
        elif tag == RETIRE:
            self._retire_locked(child, str(message[1]))

    def on_exit_locked(self, child: ChildProcess, exitcode: int | None, replies: Replies) -> None:
        jobs = list(child.inflight.values())
        child.inflight.clear()
        crash = WorkerCrashed(exitcode, f"pid {child.pid}")
        if child.stop_reason is None:
            if self._state is _State.STARTING and child.state is ChildState.STARTING:
                self.on_spawn_failed_locked(f"{crash} before it was ready (its traceback is on stderr)")
            else:
                log.error("%s%s", crash, f" while running {len(jobs)} task(s)" if jobs else "")
                self.on_spawn_failed_locked(str(crash))
        for job in jobs:
            self._crashed_locked(job, str(crash), replies)

    def on_spawn_failed_locked(self, what: str) -> None:
        """Count an unexpected child exit; too many in a short window break the runner."""
        if self._state is _State.STARTING:
            self._start_error = self._start_error or what
            self._changed.notify_all()
            return
        if not self._crashes.child_died() or self._broken is not None:
            return
        self._broken = self._fatal_to_report = RunnerBroken(
            f"{self._crashes.recent} child processes died within {self._crashes.window_s:g}s (the last: {what}); "
            "stopping instead of restarting them in a loop"
        )
        for job in [*self._pending, *(job for _, _, job in self._retries)]:
            self._finish_locked(job, TaskResponse.failure(job.request.task_id, str(self._broken), retry=True), [])
        self._pending.clear()
        self._retries.clear()

    def next_due_locked(self) -> float:
        due = self._retries[0][0] if self._retries else math.inf
        for child in self._children:
            for job in child.inflight.values():
                if job.deadline is not None and job.deadline < due:
                    due = job.deadline
        return due

    def on_tick_locked(self, now: float, replies: Replies) -> BaseException | None:
        for child in list(self._children):
            overdue = [job for job in child.inflight.values() if job.deadline is not None and now >= job.deadline]
            if overdue:
                self._timed_out_locked(child, overdue[0], replies)
        while self._retries and self._retries[0][0] <= now:
            self._pending.append(heapq.heappop(self._retries)[2])
        self._dispatch_locked()
        fatal, self._fatal_to_report = self._fatal_to_report, None
        return fatal

    # --- what happens to tasks ---------------------------------------------------------------

    def _after_task_locked(self, child: ChildProcess, rss: int) -> None:
        if child.state is ChildState.RETIRING:
            if not child.inflight:
                child.stop(child.stop_reason or "recycled")
        elif self.max_tasks_per_child is not None and child.tasks_done >= self.max_tasks_per_child:
            self._retire_locked(
                child, f"it ran {child.tasks_done} tasks (max_tasks_per_child={self.max_tasks_per_child})"
            )
        elif self.max_memory_per_child_mb is not None and rss > self.max_memory_per_child_mb * _MIB:
            why = f"it uses {rss / _MIB:.0f} MiB after a task (max_memory_per_child_mb={self.max_memory_per_child_mb})"
            self._retire_locked(child, why)

    def _retire_locked(self, child: ChildProcess, reason: str) -> None:
        """Recycle a child: no new tasks, stopped once its running ones are answered; replaced at once."""
        if child.state in (ChildState.RETIRING, ChildState.DOOMED):
            return
        log.info("recycling child process %d: %s", child.pid, reason)
        child.stop_reason = reason
        if child.inflight:
            child.state = ChildState.RETIRING
        else:
            child.stop(reason)

    def _timed_out_locked(self, child: ChildProcess, job: Job, replies: Replies) -> None:
        timeout = TaskTimeout(self.policy.task_timeout_s or 0.0, job.attempt)
        task_id = job.request.task_id
        log.warning("task %s: %s; killing child process %d and its process group", task_id, timeout, child.pid)
        del child.inflight[job.seq]
        others = list(child.inflight.values())
        child.inflight.clear()
        child.kill(f"task {task_id} timed out")
        self._retry_or_finish_locked(job, TaskResponse.failure(task_id, str(timeout), retry=True), replies)
        for other in others:
            why = f"worker process {child.pid} was killed because another task in it timed out"
            self._retry_or_finish_locked(other, TaskResponse.failure(other.request.task_id, why, retry=True), replies)

    def _crashed_locked(self, job: Job, why: str, replies: Replies) -> None:
        task_id = job.request.task_id
        crashes = self._crashes.task_crashed(task_id)
        if self._crashes.is_poison(task_id):
            poison = f"{why}; this task has now brought down {crashes} worker processes, so it is not retried"
            self._finish_locked(job, TaskResponse.failure(task_id, poison, retry=False), replies)
        else:
            self._retry_or_finish_locked(job, TaskResponse.failure(task_id, why, retry=True), replies)

    def _retry_or_finish_locked(self, job: Job, response: TaskResponse, replies: Replies) -> None:
        if not response.retry or job.attempt > self.policy.max_retries or self._state is _State.CLOSED:
            self._finish_locked(job, response, replies)
            return
        if self._broken is not None:
            self._finish_locked(job, TaskResponse.failure(job.request.task_id, str(self._broken), retry=True), replies)
            return
        task_id = job.request.task_id
        log.info("task %s: attempt %d failed, retrying: %s", task_id, job.attempt, _last_line(response.error))
        delay_s = self.policy.backoff_s(job.attempt)
        job.attempt += 1
        job.deadline = None
        if delay_s > 0:
            heapq.heappush(self._retries, (time.monotonic() + delay_s, next(self._seq), job))
            self._wake_if_sooner(self._retries[0][0])
        else:
            self._pending.append(job)

    def _finish_locked(self, job: Job, response: TaskResponse, replies: Replies) -> None:
        if job.done:
            return
        job.done = True
        replies.append((job.reply, response))
        self._changed.notify_all()

    def _refusal_locked(self, request: TaskRequest) -> TaskResponse | None:
        if self._broken is not None:
            return TaskResponse.failure(request.task_id, str(self._broken), retry=True)
        if self._state is not _State.RUNNING:
            return TaskResponse.failure(request.task_id, f"the process runner is {self._state.value}", retry=True)
        if self._crashes.is_poison(request.task_id):
            why = f"this task already brought down {self._crashes.of_task(request.task_id)} worker processes"
            return TaskResponse.failure(request.task_id, f"{why}; it is not run again", retry=False)
        return None

    def _dispatch_locked(self) -> None:
        slots = self.slots_per_child
        while self._pending:
            best: ChildProcess | None = None
            for child in self._children:
                load = len(child.inflight)
                if child.state is ChildState.READY and load < slots and (best is None or load < len(best.inflight)):
                    best = child
            if best is None:
                return
            job = self._pending.popleft()
            job.seq = next(self._seq)
            job.deadline = self._attempt_deadline(time.monotonic())
            best.inflight[job.seq] = job
            if not best.send_task(job):
                # Its pipe is closed: the child is dying, and the supervisor will see its exit.
                del best.inflight[job.seq]
                best.state = ChildState.DOOMED
                self._pending.appendleft(job)
            elif job.deadline is not None:
                self._wake_if_sooner(job.deadline)

    def _wake_if_sooner(self, due: float) -> None:
        if self._supervisor is not None and due < self._supervisor.wake_at:
            self._supervisor.wake()

    # --- memory ------------------------------------------------------------------------------

    def _memory_watched(self) -> list[ChildProcess]:
        with self._lock:
            return [c for c in self._children if c.state in (ChildState.READY, ChildState.RETIRING)]

    def _over_memory(self, child: ChildProcess, rss: int) -> None:
        """Called by the memory monitor: recycle an idle child, kill a busy one (its tasks fail)."""
        replies: Replies = []
        with self._lock:
            if child.state not in (ChildState.READY, ChildState.RETIRING):
                return
            what = (
                f"worker process {child.pid} used {rss / _MIB:.0f} MiB with its subprocesses "
                f"(max_memory_per_child_mb={self.max_memory_per_child_mb})"
            )
            if not child.inflight:
                self._retire_locked(child, what)
            else:
                log.warning("%s while running: killing it before the kernel's OOM killer does", what)
                jobs = list(child.inflight.values())
                child.inflight.clear()
                child.kill(what)
                for job in jobs:
                    self._crashed_locked(job, f"task stopped: {what}", replies)
        for reply, response in replies:
            reply(response)
        if self._supervisor is not None:
            self._supervisor.wake()


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""
