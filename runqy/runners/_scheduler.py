"""Where each task of the process runner goes and what becomes of it.

The scheduler keeps the tasks (pending, waiting for a retry, running in a child) and
decides, under one lock, what every event means for them: an answer, a child's exit,
a deadline, a child over its memory limit. Its :class:`SupervisedEvents` methods are
called by the supervisor thread; the runner's API calls the rest.
"""

from __future__ import annotations

import collections
import enum
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Final

from runqy.errors import RunnerBroken, RunnerClosed, TaskTimeout, WorkerCrashed
from runqy.observe.telemetry import CRASHED, GAVE_UP, OK, TIMED_OUT, TaskObserver
from runqy.protocol import WRITTEN_ELSEWHERE, TaskRequest, TaskResponse
from runqy.runners._child import DONE, LOAD_FAILED, READY, RETIRE, WROTE
from runqy.runners._children import ChildProcess, ChildState, Job
from runqy.runners._crashes import CrashLedger
from runqy.runners._dispatch import Dispatcher, Limits
from runqy.runners._supervisor import ChildSupervisor, Replies, send_replies
from runqy.runners.base import Reply
from runqy.shared_stdout import SharedStdout

__all__ = ["Limits", "Scheduler", "State"]

log = logging.getLogger("runqy")

_MIB: Final = 2**20


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


class Scheduler(Dispatcher):
    """The tasks of one process runner, and the children's share of them."""

    def __init__(self, limits: Limits, observer: TaskObserver | None = None) -> None:
        self.limits = limits
        self.observer = observer or TaskObserver()
        self.policy = limits.policy
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.state = State.NEW
        self.supervisor: ChildSupervisor | None = None
        self.children: list[ChildProcess] = []
        self._crashes = CrashLedger(limits.crash_limit, limits.crash_window_s)
        self._pending: collections.deque[Job] = collections.deque()
        self._retries: list[tuple[float, int, Job]] = []
        self._seq = itertools.count(1)
        self._start_error: str | None = None
        self._broken: RunnerBroken | None = None
        self._fatal_to_report: RunnerBroken | None = None
        self._deferred: Replies = []
        #: A child's tasks run one after the other, so only the first of its jobs is running;
        #: the others wait in the child (see _dispatch_in_order_locked).
        self._queued_in_child = limits.in_order and limits.batch is None
        #: Recent task duration in the children (a moving average), None before the first answer.
        self._typical_s: float | None = None
        #: Children write the answers of the tasks read from stdin themselves: only where each runs
        #: its tasks in the order sent (see _settle_written_locked), until reclaim_stdout().
        self._children_may_write = self._queued_in_child

    @property
    def children_may_write(self) -> bool:
        """Whether children write the answers of tasks read from stdin to the protocol stream themselves."""
        return self._children_may_write

    def attach(self, supervisor: ChildSupervisor) -> None:
        self.supervisor = supervisor
        self.children = supervisor.children
        self.state = State.STARTING

    def wait_started(self) -> str | None:
        """Wait until every child is ready (then RUNNING) or start-up failed; returns the error."""
        with self.lock:
            self.changed.wait_for(
                lambda: self._start_error is not None or self._ready_count() >= self.limits.num_processes
            )
            if self._start_error is None:
                self.state = State.RUNNING
            return self._start_error

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        """Queue tasks and dispatch what idle children can take; raises RunnerClosed unless running."""
        refused: Replies = []
        with self.lock:
            if self.state is not State.RUNNING:
                raise RunnerClosed(f"{len(tasks)} task(s) submitted while the process runner is {self.state.value}")
            self._queue_locked(tasks, refused)
            self._dispatch_locked()
        send_replies(refused)

    def _queue_locked(
        self, tasks: list[tuple[TaskRequest, Reply]], refused: Replies, answers_to: SharedStdout | None = None
    ) -> None:
        """Queue tasks to be dispatched; those that must not run are answered into ``refused``."""
        arrived = time.monotonic() if self.limits.batch is not None else 0.0
        for request, reply in tasks:
            refusal = self._refusal_locked(request)
            if refusal is None:
                self._pending.append(Job(request, reply, arrived=arrived, answers_to=answers_to))
            else:
                outcome = GAVE_UP if refusal.retry else CRASHED
                self._finish_locked(Job(request, reply), refusal, refused, outcome)

    def drain_and_close(self, timeout_s: float | None) -> Replies | None:
        """Let running work finish (up to ``timeout_s``), then stop every child; None if already closed."""
        with self.lock:
            if self.state in (State.NEW, State.CLOSED):
                return None
            if self.state is State.RUNNING:
                self.state = State.DRAINING
                self.changed.wait_for(self._idle_locked, timeout_s)
            return self._close_locked()

    def _ready_count(self) -> int:
        return sum(child.state is ChildState.READY for child in self.children)

    def _idle_locked(self) -> bool:
        return not self._pending and not self._retries and not any(c.inflight for c in self.children)

    def _close_locked(self) -> Replies:
        self.state = State.CLOSED
        assert self.supervisor is not None
        self.supervisor.closing = True
        self.supervisor.wake()
        jobs = [*self._pending, *(job for _, _, job in self._retries)]
        self._pending.clear()
        self._retries.clear()
        replies: Replies = [*self._deferred]
        self._deferred.clear()
        for child in self.children:
            self._settle_written_locked(child, replies)
            busy = bool(child.inflight)
            jobs += child.inflight.values()
            child.inflight.clear()
            if child.state is not ChildState.DOOMED:
                child.kill("runner closed") if busy else child.stop("runner closed")
        self._give_up_locked(jobs, "the worker shut down before the task finished; retry it", replies)
        return replies

    # --- events from the supervisor thread (SupervisedEvents) --------------------------------

    def wanted_children_locked(self) -> int:
        if self.state is State.CLOSED or self._broken is not None or self._start_error is not None:
            return 0
        return self.limits.num_processes

    def on_message_locked(self, child: ChildProcess, message: Any, replies: Replies) -> None:
        tag = message[0]
        if tag == WROTE:
            _, seq, attempt, task_id, rss, child.abandoned, outcome, duration_s, thread = message
            response = TaskResponse(task_id, WRITTEN_ELSEWHERE)
            self._answered_locked(child, seq, attempt, response, rss, (outcome, duration_s, thread, child.pid), replies)
        elif tag == DONE:
            _, seq, attempt, task_id, result, error, retry, rss, child.abandoned, outcome, duration_s, thread = message
            response = TaskResponse(task_id, result, error, retry)
            self._answered_locked(child, seq, attempt, response, rss, (outcome, duration_s, thread, child.pid), replies)
        elif tag == READY:
            if child.state is ChildState.STARTING:
                child.state = ChildState.READY
                log.debug("child process %d ready in %.0f ms", child.pid, (time.monotonic() - child.started_at) * 1000)
            self.changed.notify_all()
        elif tag == LOAD_FAILED:
            if self.state is State.STARTING:
                self._start_error = self._start_error or str(message[1])
                self.changed.notify_all()
            else:
                log.error("a replacement child process failed to load: %s", message[1])
        elif tag == RETIRE:
            self._retire_locked(child, str(message[1]), "abandoned_threads")

    def _answered_locked(
        self,
        child: ChildProcess,
        seq: int,
        attempt: int,
        response: TaskResponse,
        rss: int,
        where: tuple[str, float | None, str, int],
        replies: Replies,
    ) -> None:
        task_id = response.task_id
        job = child.inflight.pop(seq, None)
        if job is None or job.attempt != attempt:
            # Also the notice of an answer written by a child that was settled meanwhile (see _settle_written_locked).
            log.debug("dropping a late answer for task %s attempt %d from child %d", task_id, attempt, child.pid)
            return
        child.tasks_done += 1
        duration_s = where[1]
        if duration_s is not None:
            typical = self._typical_s
            self._typical_s = duration_s if typical is None else typical + (duration_s - typical) / 8
        if self._queued_in_child and child.inflight:
            self._start_next_locked(child)
        self._crashes.made_progress()
        if response.error is None:
            self._crashes.forget(task_id)
        self._retry_or_finish_locked(job, response, replies, where)
        self._after_task_locked(child, rss)

    def on_exit_locked(self, child: ChildProcess, exitcode: int | None, replies: Replies) -> None:
        self._settle_written_locked(child, replies)  # it may have died between writing an answer and telling us
        jobs = list(child.inflight.values())
        child.inflight.clear()
        crash = WorkerCrashed(exitcode, f"pid {child.pid}")
        cause = "crashed" if child.stop_reason is None else child.stop_cause
        if cause is not None and self.state in (State.RUNNING, State.DRAINING):
            self.observer.child_restarted(cause)
        if child.stop_reason is None:
            if self.state is State.STARTING and child.state is ChildState.STARTING:
                self.on_child_failed_locked(f"{crash} before it was ready (its traceback is on stderr)")
            else:
                log.error("%s%s", crash, f" while running {len(jobs)} task(s)" if jobs else "")
                self.on_child_failed_locked(str(crash))
        self._all_crashed_locked(jobs, str(crash), replies, child.pid)

    def on_child_failed_locked(self, what: str) -> None:
        """Count an unexpected child exit; too many in a short window break the runner."""
        if self.state is State.STARTING:
            self._start_error = self._start_error or what
            self.changed.notify_all()
            return
        if not self._crashes.child_died() or self._broken is not None:
            return
        self._broken = self._fatal_to_report = RunnerBroken(
            f"{self._crashes.recent} child processes died within {self._crashes.window_s:g}s without answering "
            f"a task in between (the last: {what}); "
            "stopping instead of restarting them in a loop"
        )
        # Answered on the next tick: this may run where no reply list is at hand.
        self._give_up_locked([*self._pending, *(job for _, _, job in self._retries)], str(self._broken), self._deferred)
        self._pending.clear()
        self._retries.clear()

    def on_tasks_locked(
        self, tasks: list[tuple[TaskRequest, Reply]], replies: Replies, answers_to: SharedStdout | None
    ) -> None:
        """Tasks the supervisor read from stdin: queued and dispatched like submitted ones.

        ``answers_to``: the stream their replies write to, if children may write to it too.
        """
        if self.state is State.RUNNING:
            self._queue_locked(tasks, replies, answers_to)
            self._dispatch_locked()
            return
        why = f"runner rejected the task: the process runner is {self.state.value}"
        self._give_up_locked([Job(request, reply) for request, reply in tasks], why, replies)

    def next_due_locked(self) -> float:
        due = self._retries[0][0] if self._retries else math.inf
        spec = self.limits.batch
        if spec is not None and self._pending and not self._pending[0].pin:
            batch_due = spec.due(self._pending[0].arrived)
            if batch_due > time.monotonic():  # past due, it waits for a free child, whose answer wakes us
                due = min(due, batch_due)
        for child in self.children:
            for job in self._timed_locked(child):
                if job.deadline is not None and job.deadline < due:
                    due = job.deadline
        return due

    def on_tick_locked(self, now: float, replies: Replies) -> BaseException | None:
        for child in list(self.children):
            overdue = [job for job in self._timed_locked(child) if job.deadline is not None and now >= job.deadline]
            if overdue:
                self._timed_out_locked(child, overdue, replies)
        while self._retries and self._retries[0][0] <= now:
            self._pending.append(heapq.heappop(self._retries)[2])
        self._dispatch_locked()
        replies += self._deferred
        self._deferred.clear()
        fatal, self._fatal_to_report = self._fatal_to_report, None
        return fatal

    def _timed_locked(self, child: ChildProcess) -> Iterable[Job]:
        """The child's jobs that may have a deadline, looked at on every pass.

        None without a timeout; with tasks queued in the child, only the one running
        (the others get theirs when they start, and up to 32 may be held).
        """
        if self.policy.task_timeout_s is None:
            return ()
        if self._queued_in_child:
            return itertools.islice(child.inflight.values(), 1)
        return child.inflight.values()

    # --- what happens to tasks ---------------------------------------------------------------

    def _after_task_locked(self, child: ChildProcess, rss: int) -> None:
        if child.state is ChildState.RETIRING:
            if not child.inflight:
                child.stop(child.stop_reason or "recycled")
        elif self.limits.max_tasks_per_child is not None and child.tasks_done >= self.limits.max_tasks_per_child:
            why = f"it ran {child.tasks_done} tasks (max_tasks_per_child={self.limits.max_tasks_per_child})"
            self._retire_locked(child, why, "max_tasks")
        elif (limit_mb := self.limits.max_memory_per_child_mb) is not None and rss > limit_mb * _MIB:
            why = f"it uses {rss / _MIB:.0f} MiB after a task (max_memory_per_child_mb={limit_mb})"
            self._retire_locked(child, why, "memory")

    def _retire_locked(self, child: ChildProcess, reason: str, cause: str) -> None:
        """Recycle a child: no new tasks, stopped once its running ones are answered; replaced at once."""
        if child.state in (ChildState.RETIRING, ChildState.DOOMED):
            return
        log.info("recycling child process %d: %s", child.pid, reason)
        child.stop_reason = reason
        child.stop_cause = cause
        if child.inflight:
            child.state = ChildState.RETIRING
        else:
            child.stop(reason)

    def _timed_out_locked(self, child: ChildProcess, overdue: list[Job], replies: Replies) -> None:
        # Several overdue at once: the tasks of one batch call, which share its deadline.
        self._settle_written_locked(child, replies)
        overdue = [job for job in overdue if job.seq in child.inflight]
        if not overdue:  # its answer was written just in time
            child.allow()
            return
        task_id = overdue[0].request.task_id
        log.warning(
            "task %s: %s; killing child process %d and its process group",
            task_id,
            TaskTimeout(self.policy.task_timeout_s or 0.0, overdue[0].attempt),
            child.pid,
        )
        for job in overdue:
            del child.inflight[job.seq]
        others = list(child.inflight.values())
        child.inflight.clear()
        child.kill(f"task {task_id} timed out")
        child.stop_cause = "timeout"
        if self._queued_in_child:
            self._requeue_locked(others, replies)  # waiting behind the overdue task, never started
            others = []
        for job in overdue:
            timeout = TaskTimeout(self.policy.task_timeout_s or 0.0, job.attempt)
            response = TaskResponse.failure(job.request.task_id, str(timeout), retry=True)
            where = (TIMED_OUT, time.monotonic() - job.started, "-", child.pid)
            self._retry_or_finish_locked(job, response, replies, where)
        for other in others:
            why = f"worker process {child.pid} was killed because another task in it timed out"
            failure = TaskResponse.failure(other.request.task_id, why, retry=True)
            self._retry_or_finish_locked(other, failure, replies, (CRASHED, None, "-", child.pid))

    def _all_crashed_locked(self, jobs: list[Job], why: str, replies: Replies, pid: int) -> None:
        """The tasks a child was running when it died: each on its own, or, for batches, bisected.

        No task of a crashed batch is blamed for it: the batch is split in halves, each
        run alone as one call on a child with nothing else, until the task that kills
        its child crashes one alone: that one is the poison; the others are answered
        with their results.
        """
        if self._queued_in_child and len(jobs) > 1:
            # Only the first was running; the others never started and are not to blame.
            self._requeue_locked(jobs[1:], replies)
            jobs = jobs[:1]
        if self.limits.batch is None or (len(jobs) == 1 and not jobs[0].suspect):
            for job in jobs:
                self._crashed_locked(job, why, replies, pid)
        elif len(jobs) == 1:
            job = jobs[0]
            self._crashes.mark_poison(job.request.task_id)
            poison = f"{why}; this task brought down a worker process alone after its batch crashed one: not retried"
            failure = TaskResponse.failure(job.request.task_id, poison)
            self._finish_locked(job, failure, replies, CRASHED, time.monotonic() - job.started, "-", pid)
        elif jobs:
            log.warning("a batch of %d task(s) crashed its child; running it in halves to find the cause", len(jobs))
            half = len(jobs) // 2
            for group in (jobs[:half], jobs[half:]):
                pin = next(self._seq)
                for job in group:
                    job.pin, job.suspect, job.deadline = pin, True, None
            self._pending.extendleft(reversed(jobs))  # first: they have waited longest

    def _crashed_locked(self, job: Job, why: str, replies: Replies, pid: int) -> None:
        task_id = job.request.task_id
        crashes = self._crashes.task_crashed(task_id)
        where = (CRASHED, time.monotonic() - job.started, "-", pid)
        if self._crashes.is_poison(task_id):
            poison = f"{why}; this task has now brought down {crashes} worker processes, so it is not retried"
            self._finish_locked(job, TaskResponse.failure(task_id, poison, retry=False), replies, *where)
        else:
            self._retry_or_finish_locked(job, TaskResponse.failure(task_id, why, retry=True), replies, where)

    def _retry_or_finish_locked(
        self, job: Job, response: TaskResponse, replies: Replies, where: tuple[str, float | None, str, int]
    ) -> None:
        """Retry the job here or answer it; ``where`` is how its attempt ended: (outcome, duration_s, thread, pid)."""
        if not response.retry or job.attempt > self.policy.max_retries or self.state is State.CLOSED:
            self._finish_locked(job, response, replies, *where)
            return
        if self._broken is not None:
            self._give_up_locked([job], str(self._broken), replies)
            return
        self.observer.retried(job.request, job.attempt, *where, response.error)
        delay_s = self.policy.backoff_s(job.attempt)
        job.attempt += 1
        job.deadline = None
        job.pin = 0  # a retry joins later batches like any task
        if delay_s > 0:
            heapq.heappush(self._retries, (time.monotonic() + delay_s, next(self._seq), job))
            self._wake_if_sooner(self._retries[0][0])
        else:
            self._pending.append(job)

    def _finish_locked(
        self,
        job: Job,
        response: TaskResponse,
        replies: Replies,
        outcome: str,
        duration_s: float | None = None,
        thread: str = "-",
        pid: int | None = None,
    ) -> None:
        if job.done:
            return
        job.done = True
        # Observed by whoever sends the reply, after the lock is released: counting and
        # logging stay off the lock every child's answer needs.
        observed = (job.request, job.attempt, outcome, duration_s, thread, pid, response.error)
        if response.result is WRITTEN_ELSEWHERE:
            # A child wrote its line: the task is closed now, under the lock, so that once
            # reclaim_stdout() holds the lock no such task is still open on the serving loop.
            job.reply(response)
            replies.append((partial(_observe_then_reply, self.observer.finished, observed, _nothing), response))
        else:
            replies.append((partial(_observe_then_reply, self.observer.finished, observed, job.reply), response))
        if self.state is State.DRAINING:  # the only wait that an answer can end
            self.changed.notify_all()

    def _give_up_locked(self, jobs: Iterable[Job], why: str, replies: Replies) -> None:
        """Answer jobs that will not run here with ``why`` and ``retry: true``: the Go worker may run them again."""
        for job in jobs:
            self._finish_locked(job, TaskResponse.failure(job.request.task_id, why, retry=True), replies, GAVE_UP)

    def _refusal_locked(self, request: TaskRequest) -> TaskResponse | None:
        if self._broken is not None:
            return TaskResponse.failure(request.task_id, str(self._broken), retry=True)
        if self._crashes.is_poison(request.task_id):
            why = f"this task already brought down {self._crashes.of_task(request.task_id)} worker processes"
            return TaskResponse.failure(request.task_id, f"{why}; it is not run again", retry=False)
        return None

    def _requeue_locked(self, jobs: list[Job], replies: Replies) -> None:
        """Jobs a lost child held but never started: first in the queue again, same attempt, no blame."""
        if self._broken is not None or self.state is State.CLOSED:
            why = str(self._broken) if self._broken is not None else "the worker shut down before the task ran"
            self._give_up_locked(jobs, why, replies)
            return
        for job in jobs:
            job.deadline = None
        self._pending.extendleft(reversed(jobs))

    # --- answers written by the children ------------------------------------------------------

    def reclaim_stdout(self) -> None:
        """Let no child write an answer any more, and close every task whose answer one wrote (see Runner)."""
        replies: Replies = []
        with self.lock:
            self._children_may_write = False
            for child in self.children:
                self._settle_written_locked(child, replies)
        send_replies(replies)

    def _settle_written_locked(self, child: ChildProcess, replies: Replies) -> None:
        """Revoke the child's writing of answers and finish the tasks whose answers it already wrote.

        Called before the parent answers any task the child holds (it timed out, died, or
        is stopped). The child answers its tasks in the order sent, so those up to the
        last seq it wrote are answered; the rest are still the parent's to answer.
        """
        written = child.revoke()
        settled = [seq for seq in child.inflight if seq <= written]
        for seq in settled:
            job = child.inflight.pop(seq)
            child.tasks_done += 1
            where = (OK, None, "-", child.pid)
            self._finish_locked(job, TaskResponse(job.request.task_id, WRITTEN_ELSEWHERE), replies, *where)
        if settled and child.inflight:
            self._start_next_locked(child)  # the one after them is running: its timeout runs from now

    # --- memory ------------------------------------------------------------------------------

    def memory_watched(self) -> list[ChildProcess]:
        with self.lock:
            return [c for c in self.children if c.state in (ChildState.READY, ChildState.RETIRING)]

    def over_memory(self, child: ChildProcess, rss: int) -> None:
        """Called by the memory monitor: recycle an idle child; kill a busy one (its tasks fail).

        A busy child is killed when it is seen over the limit twice in a row while the
        same task runs: a task that only peaks for a moment and finishes is not failed
        for it (its child is recycled after it instead).
        """
        replies: Replies = []
        with self.lock:
            if child.state not in (ChildState.READY, ChildState.RETIRING):
                return
            what = (
                f"worker process {child.pid} used {rss / _MIB:.0f} MiB with its subprocesses "
                f"(max_memory_per_child_mb={self.limits.max_memory_per_child_mb})"
            )
            # The attempts running there: with tasks queued in the child, only the first.
            running = set(itertools.islice(child.inflight, 1 if self._queued_in_child else None))
            suspects, child.memory_suspects = child.memory_suspects, running
            if not child.inflight:
                self._retire_locked(child, what, "memory")
            elif not running & suspects:
                return  # the first sighting: look again on the next check
            else:
                log.warning("%s while running: killing it before the kernel's OOM killer does", what)
                self._settle_written_locked(child, replies)
                jobs = list(child.inflight.values())
                child.inflight.clear()
                child.kill(what)
                child.stop_cause = "memory"
                self._all_crashed_locked(jobs, f"task stopped: {what}", replies, child.pid)
        send_replies(replies)
        if self.supervisor is not None:
            self.supervisor.wake()


def _nothing(response: TaskResponse) -> None:
    pass


def _observe_then_reply(
    observe: Callable[..., None], observed: tuple[Any, ...], reply: Reply, response: TaskResponse
) -> None:
    try:
        observe(*observed)
    finally:
        reply(response)
