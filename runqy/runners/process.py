"""PersistentProcessRunner: tasks run in long-lived child processes, which are killed and replaced when they misbehave.

Data flow::

  stdin (lent by the serving loop)     parent                                   children (_child.py)
  --------------------------------     ------                                   --------------------
        |  read by the supervisor thread, between answers
        v
      Job --> pending --dispatch to ready children-------------------> pipe 0 --> child 0 (own session)
      (_scheduler.py,  ^  (short tasks: several to a message, also     pipe 1 --> child 1   @load once,
       _dispatch.py)   |   queued behind those a child holds)            ...            then tasks
                       | local retry (backoff)                                               |
  stdout <-- reply <-- finish <-- supervisor thread <-- DONE(seq, attempt, result) ---------+
  (the pass's answers            (_supervisor.py) poll() over stdin, every pipe, every process
   in one write)                 sentinel and a wake-up pipe; the scheduler decides:
                                 - deadline passed: kill the child's process group (SIGTERM,
                                   grace, SIGKILL), answer or retry the task, spawn a replacement
                                 - child exited: fail its in-flight task (exit code / signal),
                                   retry it or answer it as poison, respawn; crash loop -> on_fatal
                                 - recycling after max_tasks_per_child or max_memory_per_child_mb
                               memory monitor thread: psutil RSS of each child + its descendants

  A child writes the line of a success itself when it shares the protocol stream (stdout
  is a pipe), and sends WROTE(seq) instead of DONE: see ``runqy.shared_stdout``.

This module is the runner's API and its seam for the hybrid runner; the parts are
``_scheduler`` (tasks), ``_dispatch`` (which child, how many tasks per message),
``_supervisor`` (the children's lifecycle), ``_children`` (one child's handle),
``_crashes`` (poison tasks, crash loops), ``_wire`` (frames on the pipes) and
``_child`` (the code running in each child).

Each child has its own pipe: one queue shared by all children would starve them all
once a child killed while holding the queue's lock. Every attempt carries a sequence
number, so a late answer (from a child that was given up on) is recognised and dropped.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Final

import psutil

from runqy.app import Registry
from runqy.attempts import RetryPolicy
from runqy.batching import BatchSpec
from runqy.errors import LoadFailed, RunnerClosed
from runqy.observe.logs import configured_format
from runqy.protocol import TaskRequest
from runqy.runners._child import ChildSpec
from runqy.runners._children import KILL_GRACE_S, ChildState, tree_rss_bytes, watch_memory
from runqy.runners._scheduler import Limits, Scheduler
from runqy.runners._supervisor import ChildSupervisor, send_replies
from runqy.runners.base import Capabilities, Reply, Runner

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.config.settings import RunqySettings
    from runqy.inline import StdinHost

__all__ = ["PersistentProcessRunner", "default_num_processes"]

log = logging.getLogger("runqy")

#: How often the memory monitor measures the children while they run.
_MEMORY_CHECK_INTERVAL_S: Final = 0.2


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
        spin_wait_us: float = 0.0,
    ) -> None:
        super().__init__()
        self.policy = policy or RetryPolicy()
        self.num_processes = num_processes or default_num_processes()
        self.start_method = start_method
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child_mb = max_memory_per_child_mb
        #: ``crash_limit`` unexpected child exits within ``crash_window_s`` seconds, with no task answered
        #: in between, break the runner.
        self.crash_limit = crash_limit
        self.crash_window_s = crash_window_s
        #: How long the parent polls for the next answer or request before sleeping (see runqy.spin).
        self.spin_wait_us = spin_wait_us
        # An explicit context: the start method of the user's own multiprocessing stays untouched.
        self._ctx = multiprocessing.get_context(start_method)
        self._scheduler: Scheduler | None = None
        self._supervisor: ChildSupervisor | None = None
        self._monitor: threading.Thread | None = None
        self._closing = threading.Event()
        self._batch: BatchSpec | None = None

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
            "spin_wait_us": settings.spin_wait_us,
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
        if self._scheduler is not None:
            return
        spec = ChildSpec.for_registry(
            registry,
            threads=self._child_threads(),
            policy=self.policy,
            report_rss=self.max_memory_per_child_mb is not None,
            log_level=log.getEffectiveLevel(),
            log_format=configured_format(),
        )
        if self.start_method == "forkserver":
            # Children fork from a server that already imported runqy and the worker module.
            preload = ["runqy.runners._child"] + [ref.module for ref in (spec.handler,) if ref.module != "__main__"]
            self._ctx.set_forkserver_preload(preload)
        self._batch = registry.batch_spec()
        scheduler = self._scheduler = Scheduler(self._limits(), self.telemetry)
        self._supervisor = ChildSupervisor(
            self._ctx,
            spec,
            scheduler.lock,
            scheduler,
            lambda exc: self.on_fatal(exc),
            self.spin_wait_us / 1e6,
            share_stdout=scheduler.children_may_write,
        )
        scheduler.attach(self._supervisor)
        self._supervisor.start()
        atexit.register(self._supervisor.kill_all)
        error = scheduler.wait_started()
        if error is not None:
            self.close(timeout_s=0)
            raise LoadFailed(error)
        if self.max_memory_per_child_mb is not None:
            limit = self.max_memory_per_child_mb * 2**20
            args = (limit, scheduler.memory_watched, scheduler.over_memory, self._closing, _MEMORY_CHECK_INTERVAL_S)
            self._monitor = threading.Thread(target=watch_memory, args=args, name="runqy-memory", daemon=True)
            self._monitor.start()
        log.info("%d child process(es) ready: %s", self.num_processes, " ".join(map(str, self.child_pids)))

    def submit(self, request: TaskRequest, reply: Reply) -> None:
        self.submit_many([(request, reply)])

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        if self._scheduler is None:
            raise RunnerClosed(f"{type(self).__name__} is not started: tasks cannot run")
        self._scheduler.submit_many(tasks)

    def close(self, timeout_s: float | None = None) -> None:
        if self._scheduler is None:
            return
        replies = self._scheduler.drain_and_close(timeout_s)
        if replies is None:
            return  # closed before
        self._closing.set()
        send_replies(replies)
        if self._supervisor is not None:
            self._supervisor.join(KILL_GRACE_S + 2.0)
            atexit.unregister(self._supervisor.kill_all)
            self._supervisor.kill_all()  # whatever did not exit in time
        if self._monitor is not None:
            self._monitor.join()

    def reclaim_stdout(self) -> None:
        if self._scheduler is not None:
            self._scheduler.reclaim_stdout()

    def stdin_host(self) -> StdinHost | None:
        """The supervisor thread, which reads stdin in the loop that reads the children's answers."""
        return self._supervisor

    @property
    def abandoned_attempts(self) -> int:
        """Timed-out attempts still running in threads of the children (hybrid); they die with their child."""
        if self._scheduler is None:
            return 0
        with self._scheduler.lock:
            return sum(child.abandoned for child in self._scheduler.children)

    @property
    def child_pids(self) -> list[int]:
        """Pids of the live children (for monitoring and tests)."""
        if self._scheduler is None:
            return []
        with self._scheduler.lock:
            return [c.pid for c in self._scheduler.children if c.state is not ChildState.DOOMED]

    def child_memory(self) -> dict[int, int]:
        """Resident memory of each live child with its subprocesses, by pid (read now: milliseconds per child)."""
        return {pid: tree_rss_bytes(pid) for pid in self.child_pids}

    def _limits(self) -> Limits:
        return Limits(
            policy=self.policy,
            num_processes=self.num_processes,
            slots_per_child=self.slots_per_child,
            attempt_deadline=self._attempt_deadline,
            max_tasks_per_child=self.max_tasks_per_child,
            max_memory_per_child_mb=self.max_memory_per_child_mb,
            crash_limit=self.crash_limit,
            crash_window_s=self.crash_window_s,
            batch=self._batch,
            in_order=self._child_threads() == 0,
        )
