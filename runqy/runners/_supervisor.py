"""The supervisor thread of the process runner: keeps children alive and turns what they do into events.

It owns the children's lifecycle (spawn, read, notice exits, escalate kills) and
nothing about tasks: what a message, an exit, a deadline or a request read from stdin
means for a task is decided by the runner, through :class:`SupervisedEvents`, always
under the runner's lock and always on this one thread.

While the serving loop lends it stdin (:meth:`ChildSupervisor.host`), this thread is the
whole parent's hot path: one poll wakes it for requests and for answers alike, it sends
the requests to the children and writes the answers itself. A reader and a writer
thread handing each task on would cost more than the task's hop to a child.
"""

from __future__ import annotations

import logging
import math
import selectors
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any, Final, Protocol

from runqy.errors import RunnerBroken
from runqy.inline import HostedStdin, Interrupt
from runqy.protocol import TaskRequest, TaskResponse
from runqy.runners._child import ChildSpec
from runqy.runners._children import ChildProcess
from runqy.runners.base import Reply
from runqy.shared_stdout import SharedStdout, claimed
from runqy.spin import SpinWait

__all__ = ["ChildSupervisor", "Replies", "SupervisedEvents", "send_replies"]

log = logging.getLogger("runqy")

#: The supervisor wakes at least this often to notice children whose exit it could not see.
_TICK_S: Final = 1.0

#: Replies collected under the lock and sent after releasing it.
Replies = list[tuple[Reply, TaskResponse]]
#: The messages read from children in one pass, by child.
_Arrived = list[tuple[ChildProcess, list[Any]]]
#: The selector's mark for stdin (children are marked by (child, is_sentinel), the wake-up pipe by None).
_STDIN: Final = "stdin"


class SupervisedEvents(Protocol):
    """What the runner does with the supervisor's events; every method is called with the lock held."""

    def wanted_children_locked(self) -> int:
        """How many starting or ready children there should be now (0 once closed or broken)."""

    def on_message_locked(self, child: ChildProcess, message: Any, replies: Replies) -> None:
        """A message from a child (see the tags in ``_child``)."""

    def on_exit_locked(self, child: ChildProcess, exitcode: int | None, replies: Replies) -> None:
        """A child exited and was reaped; its in-flight jobs are still in ``child.inflight``."""

    def on_child_failed_locked(self, what: str) -> None:
        """A child could not be started, or died unexpectedly."""

    def on_tasks_locked(
        self, tasks: list[tuple[TaskRequest, Reply]], replies: Replies, answers_to: SharedStdout | None
    ) -> None:
        """Tasks this thread read from stdin (see :meth:`ChildSupervisor.host`), replied on ``answers_to``."""

    def next_due_locked(self) -> float:
        """The next deadline of the runner (monotonic seconds), or ``math.inf``."""

    def on_tick_locked(self, now: float, replies: Replies) -> BaseException | None:
        """Handle what is due, dispatch; returns a fatal error to report, if one arose."""


class ChildSupervisor:
    """Runs the poll loop over every child's pipe and exit sentinel, a wake-up pipe, and stdin while lent it.

    It is the runner's stdin host (:class:`~runqy.inline.StdinHost`): the requests it reads
    go to the runner as they arrive, and the runner dispatches them in the same pass.
    """

    #: The requests of a read are accepted together and queued for the children.
    runs_what_it_reads = False

    def __init__(
        self,
        ctx: BaseContext,
        spec: ChildSpec,
        lock: threading.Lock,
        events: SupervisedEvents,
        report_fatal: Callable[[BaseException], None],
        spin_wait_s: float = 0.0,
        *,
        share_stdout: bool = False,
    ) -> None:
        self._ctx = ctx
        self._report_fatal = report_fatal
        #: Children get the protocol stream, if this process serves one, to write their answers to.
        self._share_stdout = share_stdout
        self._spec = spec
        self._lock = lock
        self._events = events
        #: Every child not yet reaped; read and changed under the lock.
        self.children: list[ChildProcess] = []
        #: Set under the lock by the runner; the loop ends once no child is left.
        self.closing = False
        #: When the loop will wake up by itself; an earlier deadline must call :meth:`wake`.
        self.wake_at = 0.0
        self._next_liveness_check = time.monotonic() + _TICK_S
        # poll, not epoll: stdin may be a regular file, which epoll refuses.
        self._selector = selectors.PollSelector()
        # The answer of a quick task, or the Go worker's next request, is often a few tens of µs away.
        self._wait = SpinWait(spin_wait_s)
        self._watched: set[ChildProcess] = set()
        self._wakeup = Interrupt()
        self._selector.register(self._wakeup.fd, selectors.EVENT_READ, None)
        #: Lent by the serving loop (see :meth:`host`); None when not reading stdin.
        self._stdin: HostedStdin | None = None
        self._stdin_polled: int | None = None
        # Children are started by this thread only, so that one thread owns their lifecycle.
        self._thread = threading.Thread(target=self._run_or_fail, name="runqy-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def host(self, stdin: HostedStdin) -> None:
        """Read stdin in this loop whenever it has something, until :meth:`stop_hosting` or its end."""
        self._stdin = stdin
        self.wake()

    def stop_hosting(self) -> None:
        """Read stdin no more; the tasks already read go on."""
        self._stdin = None
        self.wake()

    def wake(self) -> None:
        """Make the loop look again at once (called from other threads; the loop itself looks after each pass)."""
        if threading.get_ident() != self._thread.ident:
            self._wakeup.set()

    def join(self, timeout_s: float) -> None:
        """Wait for the loop to end (after ``closing``), then release the wake-up pipe."""
        self.wake()
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._selector.close()
            self._wakeup.close()

    def kill_all(self) -> None:
        """SIGKILL every child's process group: the last resort, at interpreter exit or after close."""
        for child in list(self.children):
            child.signal_group(signal.SIGKILL)

    # --- the loop ----------------------------------------------------------------------------

    def _run_or_fail(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            # Nothing would answer the children or read stdin any more: the worker must restart.
            log.critical("the process runner's supervisor thread failed", exc_info=exc)
            self._report_fatal(RunnerBroken(f"the process runner's supervisor thread failed: {exc!r}"))

    def _run(self) -> None:
        missing = self._missing()
        while True:
            if missing:
                self._spawn(missing)
            with self._lock:
                if self.closing and not self.children:
                    return
                self._watch_new_locked()
                timeout_s = self._next_due_locked()
            stdin = self._poll_stdin()
            events = self._wait.wait(self._selector.select, timeout_s)
            arrived, exited, stdin_ready = self._read(events)
            tasks = self._read_stdin(stdin) if stdin is not None and stdin_ready else []
            replies: Replies = []
            with self._lock:
                self._events_locked(arrived, exited, tasks, stdin, replies)
            self._answer(replies)  # before the rounds below, which can wait: the Go worker cannot
            replies = []
            with self._lock:
                now = time.monotonic()
                self._escalate_locked(now, replies)
                fatal = self._events.on_tick_locked(now, replies)
                missing = self._missing_locked()
            self._answer(replies)
            if fatal is not None:
                self._report_fatal(fatal)

    def _events_locked(
        self,
        arrived: _Arrived,
        exited: list[ChildProcess],
        tasks: list[tuple[TaskRequest, Reply]],
        stdin: HostedStdin | None,
        replies: Replies,
    ) -> None:
        """What one pass read: the children's messages, their exits, and the requests read from stdin."""
        answers_to = stdin.shared_stdout if stdin is not None else None
        if tasks and not exited:
            # First: their dispatch is what the Go worker waits for, and the answers read below
            # go out only after the lock anyway; the pass's tick gives what is left to a child
            # those answers free. Not after an exit, whose child could still be picked.
            self._events.on_tasks_locked(tasks, replies, answers_to)
            tasks = []
        for child, messages in arrived:
            for message in messages:
                self._events.on_message_locked(child, message, replies)
        for child in exited:
            if child in self._watched:
                self._exited_locked(child, replies)
        if tasks:
            self._events.on_tasks_locked(tasks, replies, answers_to)

    def _answer(self, replies: Replies) -> None:
        """Send the replies of one pass; while serving stdin, their lines go out in one write."""
        stdin = self._stdin
        if stdin is None or len(replies) < 2:
            send_replies(replies)
            return
        with stdin.answers_together():
            send_replies(replies)

    def _read(self, events: list[tuple[selectors.SelectorKey, int]]) -> tuple[_Arrived, list[ChildProcess], bool]:
        """Read every message waiting, without the lock: only this thread reads the pipes or closes them.

        Returns the messages by child, the children that exited or closed their pipe, and
        whether stdin is readable.
        """
        arrived: _Arrived = []
        exited: list[ChildProcess] = []
        stdin_ready = False
        for key, _ in events:
            if key.data is None:
                self._wakeup.clear()
                continue
            if key.data is _STDIN:
                stdin_ready = True
                continue
            child, is_sentinel = key.data
            if child not in self._watched or child in exited:
                continue
            messages = None if is_sentinel else _read_messages(child)
            if messages is None:
                exited.append(child)
            else:
                arrived.append((child, messages))
        return arrived, exited, stdin_ready

    def _poll_stdin(self) -> HostedStdin | None:
        """Poll stdin in the next wait while it is lent and a read would not have to wait for room."""
        stdin = self._stdin
        if stdin is not None and not stdin.has_room():
            stdin = None  # answers make room, and each pass looks again
        fd = None if stdin is None else stdin.fd
        if fd != self._stdin_polled:
            if self._stdin_polled is not None:
                self._selector.unregister(self._stdin_polled)
            if fd is not None:
                self._selector.register(fd, selectors.EVENT_READ, _STDIN)
            self._stdin_polled = fd
        return stdin

    def _read_stdin(self, stdin: HostedStdin) -> list[tuple[TaskRequest, Reply]]:
        """The tasks of one read of stdin; at its end (or when reading failed) stdin is read no more."""
        tasks = stdin.read(self._wakeup.fd)  # the wake-up pipe ends a wait, should stdin have nothing after all
        if tasks is None:
            self._stdin = None
            return []
        return list(tasks)

    def _missing(self) -> int:
        with self._lock:
            return self._missing_locked()

    def _missing_locked(self) -> int:
        """Children to start now to have as many as wanted."""
        if self.closing:
            return 0
        alive = sum(child.accepts_work_soon for child in self.children)
        return self._events.wanted_children_locked() - alive

    def _spawn(self, missing: int) -> None:
        for _ in range(missing):
            try:
                child = ChildProcess(self._ctx, self._spec, "runqy-child", claimed() if self._share_stdout else None)
            except Exception as exc:  # noqa: BLE001 - fork failures, pickling, multiprocessing's own checks
                log.error("cannot start a child process: %s", exc)
                with self._lock:
                    self._events.on_child_failed_locked(f"cannot start a child process: {exc}")
                return
            with self._lock:
                self.children.append(child)
                if self.closing:
                    # The runner closed while this child was being started: nobody will stop it.
                    child.kill("runner closed")

    def _watch_new_locked(self) -> None:
        for child in self.children:
            if child not in self._watched:
                self._watched.add(child)
                self._selector.register(child.conn.fileno(), selectors.EVENT_READ, (child, False))
                self._selector.register(child.sentinel, selectors.EVENT_READ, (child, True))

    def _next_due_locked(self) -> float:
        now = time.monotonic()
        due = min(now + _TICK_S, self._events.next_due_locked())
        for child in self.children:
            if child.kill_at is not None:
                due = min(due, child.kill_at)
        self.wake_at = due
        return max(0.0, due - now) if due < math.inf else _TICK_S

    def _exited_locked(self, child: ChildProcess, replies: Replies) -> None:
        # Answers it sent before dying still count (poll: a forked grandchild may hold the pipe open).
        while child.conn.poll() and (messages := _read_messages(child)) is not None:
            for message in messages:
                self._events.on_message_locked(child, message, replies)
        # Kill what is left of its group (its subprocesses) while the child is unreaped,
        # so that its pid, which names the group, cannot have been reused yet.
        child.signal_group(signal.SIGKILL)
        code = child.exitcode(wait_s=1.0)
        self.children.remove(child)
        if child in self._watched:
            self._watched.discard(child)
            self._selector.unregister(child.conn.fileno())
            self._selector.unregister(child.sentinel)
        self._events.on_exit_locked(child, code, replies)
        child.release()

    def _escalate_locked(self, now: float, replies: Replies) -> None:
        check_liveness = now >= self._next_liveness_check
        if check_liveness:
            self._next_liveness_check = now + _TICK_S
        for child in list(self.children):
            if child.kill_at is not None and now >= child.kill_at:
                child.kill_at = None
                child.signal_group(signal.SIGKILL)
            elif check_liveness and child.process.exitcode is not None:
                # Its exit went unseen (a forked grandchild may hold the pipe and sentinel open).
                self._exited_locked(child, replies)


def _read_messages(child: ChildProcess) -> list[Any] | None:
    """The complete messages waiting from a child whose pipe is readable; None once it is closed."""
    try:
        return child.inbox.read()
    except OSError:
        return None
    except Exception as exc:  # noqa: BLE001 - a message this process cannot decode (a result's class it cannot import)
        log.error("cannot read a message from child process %d (%r): replacing it", child.pid, exc)
        return None


def send_replies(replies: Replies) -> None:
    """Send replies gathered under the runner's lock; outside it: a reply callback may take its own locks or be slow."""
    for reply, response in replies:
        reply(response)
