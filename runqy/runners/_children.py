"""Parent-side handles of child processes: start one, talk to it over its own pipe, kill its process group.

Used by :mod:`runqy.runners.process` (and through it the hybrid runner); the child
side is :mod:`runqy.runners._child`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from typing import Any, Final

import psutil

from runqy.fdio import write_all
from runqy.protocol import TaskRequest
from runqy.runners._child import BATCH, CHILD_ENV_VAR, STOP, TASKS, ChildSpec, child_main
from runqy.runners._wire import FrameReader, encode
from runqy.runners.base import Reply
from runqy.shared_stdout import SharedStdout

__all__ = ["ChildProcess", "ChildState", "Job", "tree_rss_bytes", "watch_memory"]

log = logging.getLogger("runqy")

#: How long a child may take to exit after SIGTERM (or after STOP) before SIGKILL.
KILL_GRACE_S: Final = 0.5

# Process.start() reads os.environ; changing it is serialised so that two runners
# starting children at once do not restore each other's value too early.
_ENV_LOCK = threading.Lock()


class ChildState(enum.Enum):
    STARTING = "starting"  # spawned, @load running
    READY = "ready"  # takes tasks
    RETIRING = "retiring"  # finishes its tasks, takes no new ones, then is stopped
    DOOMED = "doomed"  # killed or stopped; waiting for it to exit


@dataclass(eq=False, slots=True)
class Job:
    """One submitted task, across all its attempts, until its reply is sent."""

    request: TaskRequest
    reply: Reply
    attempt: int = 1
    #: Identifies the attempt in flight: a reply carrying another seq is a late one and dropped.
    seq: int = 0
    #: When the running attempt is given up (monotonic seconds), or None (also while it waits in its child).
    deadline: float | None = None
    #: When the running attempt started: sent to its child, or, queued there behind others,
    #: when the one before it was answered (monotonic seconds).
    started: float = 0.0
    done: bool = field(default=False)
    #: When it was submitted (monotonic seconds); set for batch handlers, whose short batches wait from then.
    arrived: float = 0.0
    #: The batch call it was sent in (the seq of the call's first task); 0 when not batching.
    batch: int = 0
    #: Non-zero while it belongs to a half of a crashed batch: that half runs alone, as one call.
    pin: int = 0
    #: It was in a batch whose child crashed: if it crashes a child alone, it is the poison.
    suspect: bool = False
    #: The protocol stream its reply answers on, which a child given the same stream may write
    #: its answer to itself (see runqy.shared_stdout); None: the reply is not a line on it.
    answers_to: SharedStdout | None = None


class ChildProcess:
    """One child process, its pipe, and the jobs it is running."""

    def __init__(self, ctx: BaseContext, spec: ChildSpec, name: str, shared: SharedStdout | None = None) -> None:
        parent_end, child_end = ctx.Pipe(duplex=True)
        #: The protocol stream this child may write its answers to, and its handle of it.
        self.shared = shared
        self.stdout = None if shared is None else shared.for_child(ctx)
        args = (child_end, spec, self.stdout)
        self.process: Any = ctx.Process(target=child_main, args=args, name=name)  # type: ignore[attr-defined]
        with _ENV_LOCK:
            # Set while the child is created: spawn re-imports the user's script before any
            # code of ours runs in the child, and run() at its top level must not serve there.
            previous = os.environ.get(CHILD_ENV_VAR)
            os.environ[CHILD_ENV_VAR] = "1"
            try:
                self.process.start()
            finally:
                if previous is None:
                    del os.environ[CHILD_ENV_VAR]
                else:
                    os.environ[CHILD_ENV_VAR] = previous
        child_end.close()
        self.conn = parent_end
        #: The messages from the child, read from the connection's own descriptor (see _wire).
        self.inbox = FrameReader(parent_end.fileno())
        self.pid: int = self.process.pid
        self.state = ChildState.STARTING
        #: Its jobs by seq, in the order sent (the order a process-runner child runs them in).
        self.inflight: dict[int, Job] = {}
        self.tasks_done = 0
        #: Timed-out attempts still running in its threads (hybrid), as of its last answer.
        self.abandoned = 0
        #: Attempts (by seq) running when the memory monitor last saw this child over its limit.
        self.memory_suspects: set[int] = set()
        #: Why we stopped or killed it; None while its exit would be a crash.
        self.stop_reason: str | None = None
        #: Why it is replaced, as a metric label (timeout, memory, max_tasks, abandoned_threads); None when not.
        self.stop_cause: str | None = None
        #: When to SIGKILL the group if the child has not exited by then.
        self.kill_at: float | None = None
        self.started_at = time.monotonic()

    @property
    def accepts_work_soon(self) -> bool:
        """Starting or ready: counts towards the runner's number of children."""
        return self.state in (ChildState.STARTING, ChildState.READY)

    @property
    def sentinel(self) -> int:
        return int(self.process.sentinel)

    def send_tasks(self, jobs: list[Job], *, may_write: bool = False) -> bool:
        """Send attempts of jobs in one message, each a call of its own; False when the pipe is broken.

        With ``may_write``, the child writes the answers of those whose stream it shares itself.
        """
        shared = self.shared if may_write else None
        alone = shared is not None
        return self._send(
            (TASKS, [(job.seq, job.attempt, tuple(job.request), alone and job.answers_to is shared) for job in jobs])
        )

    def revoke(self) -> int:
        """Make the child send every answer through the parent; returns the seq of the last one it wrote itself.

        Its tasks up to that seq are answered (0: none). Call it before answering any
        task the child holds: after it, the child writes no answer.
        """
        if self.shared is None or self.stdout is None:
            return 0
        return self.shared.revoke(self.stdout)

    def allow(self) -> None:
        """Undo :meth:`revoke`: the parent will not answer the child's tasks itself after all."""
        if self.shared is not None and self.stdout is not None:
            self.shared.allow(self.stdout)

    def send_batch(self, jobs: list[Job]) -> bool:
        """Send one call of a batch handler: every job's attempt in one message; False when the pipe is broken."""
        return self._send((BATCH, [(job.seq, job.attempt, tuple(job.request)) for job in jobs]))

    @property
    def batches(self) -> int:
        """Batch calls running in the child (its jobs grouped by the call they were sent in)."""
        return len({job.batch for job in self.inflight.values()})

    @property
    def isolated(self) -> bool:
        """It runs a half of a crashed batch, which must run alone to show whether it kills the child."""
        return any(job.pin for job in self.inflight.values())

    def stop(self, reason: str) -> None:
        """Ask an idle child to exit, and SIGKILL its group if it has not after a grace period."""
        self.state = ChildState.DOOMED
        self.stop_reason = self.stop_reason or reason
        self.kill_at = time.monotonic() + KILL_GRACE_S
        self._send((STOP,))

    def kill(self, reason: str) -> None:
        """SIGTERM the child's whole process group now, SIGKILL it after a grace period."""
        self.state = ChildState.DOOMED
        self.stop_reason = self.stop_reason or reason
        self.kill_at = time.monotonic() + KILL_GRACE_S
        self.signal_group(signal.SIGTERM)

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the child's process group (its subprocesses too), or the child alone before it has one."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            # No group yet (it has not reached setsid) or none left: signal the child itself.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        except PermissionError:
            # The pid was reused by a group that is not ours: leave it alone.
            pass

    def exitcode(self, wait_s: float) -> int | None:
        """The exit code (negative signal number when killed), waiting up to ``wait_s`` for it."""
        self.process.join(wait_s)
        code: int | None = self.process.exitcode
        return code

    def release(self) -> None:
        """Close the pipe and the process handle once the child has exited."""
        self.conn.close()
        # ValueError: still running (join timed out); the handle is left to the garbage collector.
        with contextlib.suppress(ValueError):
            self.process.close()

    def _send(self, message: tuple[Any, ...]) -> bool:
        try:
            write_all(self.inbox.fd, encode(message))
        except OSError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<child pid={self.pid} {self.state.value} running={len(self.inflight)}>"


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants; 0 when it is gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # it exited while we looked
            total += process.memory_info().rss
    return total


def watch_memory(
    limit_bytes: int,
    children: Callable[[], list[ChildProcess]],
    on_over: Callable[[ChildProcess, int], None],
    stop: threading.Event,
    interval_s: float,
) -> None:
    """Measure each child with its descendants every ``interval_s`` until ``stop``; report those over the limit.

    Runs in its own thread: reading every process's memory can take milliseconds,
    which the supervisor thread must not spend while tasks wait for their answers.
    """
    while not stop.wait(interval_s):
        for child in children():
            rss = tree_rss_bytes(child.pid)
            if rss > limit_bytes:
                on_over(child, rss)
            else:
                child.memory_suspects = set()
