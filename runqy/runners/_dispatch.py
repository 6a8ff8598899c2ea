"""Which child runs each pending task of the process runner, and how many go in one message.

Part of the scheduler (:class:`~runqy.runners._scheduler.Scheduler` is a
:class:`Dispatcher`): every method here runs under the scheduler's lock.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from runqy.attempts import RetryPolicy
from runqy.batching import BatchSpec
from runqy.observe.telemetry import TaskObserver
from runqy.runners._children import ChildProcess, ChildState, Job

if TYPE_CHECKING:
    from runqy.runners._supervisor import ChildSupervisor

__all__ = ["Dispatcher", "Limits"]

#: Tasks that take less than this in the children are sent several to a message when many
#: wait: their round trip, not their run time, would limit the throughput.
_SHORT_TASK_S: Final = 0.001
#: At most this many short tasks held by one child (running or waiting there).
_MAX_TASKS_PER_CHILD: Final = 32
#: About what a message to a child and its answer take (here 130 µs, on a 2-core virtual
#: machine): tasks much shorter than that are better queued in a busy child than spread.
_ROUND_TRIP_S: Final = 0.0001


@dataclass(frozen=True)
class Limits:
    """What the runner's configuration asks of the scheduler."""

    policy: RetryPolicy
    num_processes: int
    #: Tasks one child runs at once (1 for the process runner).
    slots_per_child: int
    #: When an attempt started at the given time is given up by killing its child.
    attempt_deadline: Callable[[float], float | None]
    max_tasks_per_child: int | None
    max_memory_per_child_mb: int | None
    crash_limit: int
    crash_window_s: float
    #: How calls of a batch handler are filled; None for one task per call.
    batch: BatchSpec | None = None
    #: A child runs its tasks one at a time, in the order sent (the process runner); False:
    #: up to ``slots_per_child`` at once on threads (the hybrid runner).
    in_order: bool = True


class Dispatcher:
    """Sends pending jobs to ready children; the scheduler owns the state it works on."""

    limits: Limits
    children: list[ChildProcess]
    supervisor: ChildSupervisor | None
    observer: TaskObserver
    _pending: collections.deque[Job]
    _seq: Iterator[int]
    #: Recent task duration in the children (a moving average), None before the first answer.
    _typical_s: float | None
    #: Children may write answers to the protocol stream themselves (until the serving loop takes it back).
    _children_may_write: bool

    def _dispatch_locked(self) -> None:
        if self.limits.batch is not None:
            self._dispatch_batches_locked(self.limits.batch)
        elif self.limits.in_order:
            self._dispatch_in_order_locked()
        else:
            self._dispatch_spread_locked()

    def _dispatch_in_order_locked(self) -> None:
        """Process runner: each ready child takes its share of the pending tasks in one message.

        The child runs them one after the other and answers each before the next starts:
        one message and one wake-up of the child for several short tasks. Short tasks (see
        _SHORT_TASK_S) also go to a child that is still busy, behind the tasks it holds, so
        that it never waits for the parent between them; the first children hold as many
        as they run in about a round trip before the next ones get any: fewer busy
        processes on the cores, fuller messages. Long ones go one at a time to an idle
        child: a task queued in a child cannot move to another child that becomes free,
        so a long one would hold up the rest.
        """
        ready = [child for child in self.children if child.state is ChildState.READY]
        if not ready or not self._pending:
            return
        typical_s = self._typical_s
        share = 1
        if typical_s is not None and typical_s <= _SHORT_TASK_S:
            # As many as a child runs in about a round trip to it (queued there, a task waits no
            # longer than sending it to another child would take), or an even share of all.
            held = sum(len(child.inflight) for child in ready)
            depth = int(_ROUND_TRIP_S / max(typical_s, _ROUND_TRIP_S / _MAX_TASKS_PER_CHILD))
            share = min(max(depth, -(-(len(self._pending) + held) // len(ready))), _MAX_TASKS_PER_CHILD)
        for child in ready:
            count = min(share - len(child.inflight), len(self._pending))
            if (max_tasks := self.limits.max_tasks_per_child) is not None:
                count = min(count, max_tasks - child.tasks_done - len(child.inflight))  # recycled on time
            if count > 0:
                self._send_in_order_locked(child, [self._pending.popleft() for _ in range(count)])

    def _send_in_order_locked(self, child: ChildProcess, jobs: list[Job]) -> None:
        """Send jobs to run after those the child holds; the first one runs now if it holds none."""
        idle = not child.inflight
        for job in jobs:
            job.seq = next(self._seq)
            job.deadline = None  # set when it starts: see _start_next_locked
            child.inflight[job.seq] = job
        # Each answer is written by the child before it starts the next task: the order they
        # run in is the order they are answered in, which settling a lost child relies on.
        if not child.send_tasks(jobs, may_write=self._children_may_write):
            self._unsent_locked(child, jobs)
            return
        if idle:
            self._start_next_locked(child)

    def _start_next_locked(self, child: ChildProcess) -> None:
        """The child answered its running task and starts the next one it holds: its timeout runs from now."""
        job = next(iter(child.inflight.values()))
        job.started = time.monotonic()
        job.deadline = self.limits.attempt_deadline(job.started)
        if job.deadline is not None:
            self._wake_if_sooner(job.deadline)

    def _dispatch_spread_locked(self) -> None:
        """Hybrid runner: each task to the least busy child; a child's tasks of one pass go in one message."""
        slots = self.limits.slots_per_child
        now = time.monotonic()
        deadline = self.limits.attempt_deadline(now)
        sent: dict[ChildProcess, list[Job]] = {}
        while self._pending:
            best: ChildProcess | None = None
            for child in self.children:
                load = len(child.inflight)
                if child.state is ChildState.READY and load < slots and (best is None or load < len(best.inflight)):
                    best = child
            if best is None:
                break
            job = self._pending.popleft()
            job.seq = next(self._seq)
            job.started = now
            job.deadline = deadline
            best.inflight[job.seq] = job
            sent.setdefault(best, []).append(job)
        for child, jobs in sent.items():
            if not child.send_tasks(jobs):
                self._unsent_locked(child, jobs)
            elif deadline is not None:
                self._wake_if_sooner(deadline)

    def _unsent_locked(self, child: ChildProcess, jobs: list[Job]) -> None:
        """The child's pipe is closed: it is dying, and the supervisor will see its exit; the jobs wait for another."""
        for job in jobs:
            del child.inflight[job.seq]
            job.deadline = None
        child.state = ChildState.DOOMED
        self._pending.extendleft(reversed(jobs))

    def _dispatch_batches_locked(self, spec: BatchSpec) -> None:
        """Send batch calls to free children: a free child is one running fewer calls than its slots."""
        while self._pending:
            head = self._pending[0]
            child = self._free_child_locked(isolated=bool(head.pin))
            if child is None:
                return
            if head.pin:  # a half of a crashed batch: exactly that half, as one call
                size = next((i for i, job in enumerate(self._pending) if job.pin != head.pin), len(self._pending))
            else:
                waiting = next(
                    (i for i, job in enumerate(itertools.islice(self._pending, spec.size)) if job.pin),
                    min(spec.size, len(self._pending)),
                )
                size = spec.take_now(waiting, head.arrived, time.monotonic())
                if size == 0:
                    self._wake_if_sooner(spec.due(head.arrived))
                    return
            jobs = [self._pending.popleft() for _ in range(size)]
            deadline = self.limits.attempt_deadline(time.monotonic())
            for job in jobs:
                job.seq = next(self._seq)
                job.batch = jobs[0].seq
                job.deadline = deadline
                child.inflight[job.seq] = job
            if not child.send_batch(jobs):
                for job in jobs:  # its pipe is closed: the child is dying, and the supervisor will see its exit
                    del child.inflight[job.seq]
                child.state = ChildState.DOOMED
                self._pending.extendleft(reversed(jobs))
                continue
            self.observer.batch_called(len(jobs))
            if deadline is not None:
                self._wake_if_sooner(deadline)

    def _free_child_locked(self, *, isolated: bool) -> ChildProcess | None:
        """The least busy ready child that can take a call; with ``isolated``, only one running nothing."""
        best: ChildProcess | None = None
        for child in self.children:
            if child.state is not ChildState.READY or child.isolated:
                continue
            load = child.batches
            if load < (1 if isolated else self.limits.slots_per_child) and (best is None or load < best.batches):
                best = child
        return best

    def _wake_if_sooner(self, due: float) -> None:
        if self.supervisor is not None and due < self.supervisor.wake_at:
            self.supervisor.wake()
