"""The inline thread: one thread runs ``@load``, every task, and reads stdin whenever it has nothing to run.

A runqy-python 0.2.2 worker read a line, ran its task and wrote the answer, all in the
main thread, so a ``@load`` that made a thread-affine object (an sqlite3 connection, a
thread-local client) worked. The sequential runner keeps that promise on this thread,
for its whole life, and keeps stdin read while a task runs long::

    inline thread ── @load ── read ── parse ── run them here ── read ── ...
                                                   │ still running after hand_over_after_s
    helper ── (guarding) ── takes over reading: what it accepts is queued for the
                            inline thread, in order; hands reading back once that
                            thread has run everything and asks for it

Running quick tasks where they were read also saves the hand-off between a reader and a
runner thread, which cost more than a trivial task. Only one thread reads stdin at a
time; the one reading waits on stdin and on an interrupt pipe, so the inline thread can
take reading back, and closing stops it, without waiting for another request.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from runqy.errors import RunnerClosed
from runqy.protocol import TaskRequest
from runqy.runners.base import Reply
from runqy.shared_stdout import SharedStdout

__all__ = [
    "GUARD_IDLE_AFTER_S",
    "HAND_OVER_AFTER_S",
    "HostedStdin",
    "InlineThread",
    "Interrupt",
    "ReadChunk",
    "ReadOn",
    "RunTask",
    "StdinHost",
    "Task",
]

log = logging.getLogger("runqy")

#: How long the inline thread may run tasks while it is the reader before the helper reads instead.
HAND_OVER_AFTER_S: Final = 0.01
#: A guard stops ticking after this long without a task to watch, so an idle worker sleeps.
GUARD_IDLE_AFTER_S: Final = 1.0

T = TypeVar("T")
#: An accepted request and its reply.
Task = tuple[TaskRequest, Reply]
#: Runs one task to its end in the calling thread and answers it.
RunTask = Callable[[TaskRequest, Reply], object]
#: Whether the thread iterating a hosted read's tasks may read stdin again now (see :class:`ReadChunk`).
ReadOn = Callable[[], bool]


class ReadChunk(Protocol):
    """Reads stdin once, waiting also on the given interrupt fd.

    Returns the tasks it read, [] when interrupted, None once stdin is closed. A list
    holds tasks accepted already (a burst, refusals, the last ones at the end of stdin).
    For a host that ``runs_what_it_reads``, anything else accepts each task as it is
    iterated, in order; those a thread leaves (it stopped, say, behind a long task) come
    first in the next read, by whichever thread, without waiting for stdin.

    Given ``read_on``, the iteration goes on with the lines stdin holds by the time those
    tasks have run, without waiting, for as long as ``read_on()`` allows: it is asked
    under the lock that every read of stdin holds, so a read by another of the host's
    threads comes after any read it allowed, and the tasks stay in order. A burst read
    so ends the iteration: the next read returns its tasks, accepted already, as a list.
    """

    def __call__(self, interrupt_fd: int, read_on: ReadOn | None = None, /) -> Iterable[Task] | None: ...


@dataclass(frozen=True)
class HostedStdin:
    """What the serving loop lends a stdin host: how to read stdin, and what a host polling it needs besides."""

    read: ReadChunk
    #: The descriptor ``read`` reads: a host that waits on it among other fds polls it.
    fd: int
    #: False while so many tasks are open that ``read`` would first wait for some to be answered:
    #: a host whose own thread makes the answers must not read then (it would wait for itself).
    has_room: Callable[[], bool]
    #: The answers the calling thread makes inside go out in one write at the end: for a
    #: host that answers several tasks at once.
    answers_together: Callable[[], AbstractContextManager[object]]
    #: Where the answers of the tasks read here go, when child processes may write them there
    #: themselves (see :mod:`runqy.shared_stdout`); None: only this process writes them.
    shared_stdout: SharedStdout | None = None


class StdinHost(Protocol):
    """Threads that read stdin themselves between their tasks: an :class:`InlineThread`, or a thread pool."""

    #: Whether the thread that read tasks runs them one after the other, so that each may be
    #: parsed and admitted just before it runs (see :meth:`runqy.serve.Server.serve`).
    runs_what_it_reads: bool

    def host(self, stdin: HostedStdin) -> None:
        """Read with ``stdin.read`` whenever a thread has no task, until :meth:`stop_hosting`."""

    def stop_hosting(self) -> None:
        """Stop reading stdin; queued and running tasks go on."""


class InlineThread:
    """One long-lived thread that runs functions, then tasks in arrival order, and reads stdin between them.

    :meth:`call` runs a function there (``@load``); :meth:`submit_many` queues tasks;
    :meth:`host` makes the thread read stdin itself whenever nothing is queued.
    """

    runs_what_it_reads = True

    def __init__(self, name: str, hand_over_after_s: float = HAND_OVER_AFTER_S) -> None:
        self._hand_over_after_s = hand_over_after_s
        self._changed = threading.Condition(threading.Lock())
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._queued: collections.deque[Task] = collections.deque()
        self._run_task: RunTask | None = None
        #: Set while hosting and stdin is open: how to read it.
        self._read: ReadChunk | None = None
        #: The thread allowed to read stdin now, if any.
        self._reader: threading.Thread | None = None
        #: The inline thread asked the helper to give reading back.
        self._want_back = False
        #: When the inline thread began running its current tasks; None while it runs none.
        #: Written without the lock: reading is only ever claimed under it.
        self._busy_since: float | None = None
        self._last_work = time.monotonic()
        self._guard_sleeping = False
        self._closed = False
        self._interrupt = Interrupt()
        self._helper: threading.Thread | None = None
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the inline thread and return its result (or raise its exception)."""
        done = threading.Event()
        outcome: list[T] = []
        failure: list[BaseException] = []

        def job() -> None:
            try:
                outcome.append(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
                failure.append(exc)
            finally:
                done.set()

        with self._changed:
            self._calls.append(job)
            self._wake_locked()
        done.wait()
        if failure:
            raise failure[0]
        return outcome[0]

    def run_tasks_with(self, run_task: RunTask) -> None:
        """Set how a task runs; called once, before the first task is queued."""
        self._run_task = run_task

    def submit_many(self, tasks: list[Task]) -> None:
        """Queue tasks to run after those queued before them; raises :class:`RunnerClosed` after :meth:`close`."""
        with self._changed:
            if self._closed:
                raise RunnerClosed(f"{len(tasks)} task(s) submitted after the runner was closed")
            self._queued.extend(tasks)
            self._wake_locked()

    def host(self, stdin: HostedStdin) -> None:
        """Read stdin on the inline thread whenever it has no task, until :meth:`stop_hosting`."""
        with self._changed:
            self._read = stdin.read
            if self._helper is None:
                self._helper = threading.Thread(target=self._guard, name="runqy-read-guard", daemon=True)
                self._helper.start()
            self._wake_locked()

    def stop_hosting(self) -> None:
        """Stop reading stdin; queued and running tasks go on."""
        with self._changed:
            self._read = None
            self._wake_locked()

    def close(self, timeout_s: float | None = None) -> bool:
        """Run what is queued, then stop the threads; False if that took longer than ``timeout_s``."""
        with self._changed:
            self._closed = True
            self._read = None
            self._wake_locked()
        self.thread.join(timeout_s)
        if self._helper is not None:
            self._helper.join(timeout_s)
        stopped = not self.thread.is_alive() and not (self._helper is not None and self._helper.is_alive())
        if stopped:  # else a late reader could poll a reused fd
            self._interrupt.close()
        return stopped

    # --- the inline thread -------------------------------------------------------------------

    def _serve(self) -> None:
        while (work := self._next_work()) is not None:
            if callable(work):
                work()
            elif work:
                self._run(work)
            else:
                self._read_and_run()

    def _next_work(self) -> Callable[[], None] | list[Task] | None:
        """What the inline thread does next: a call, the queued tasks, [] to read stdin, or None to stop."""
        me = self.thread
        with self._changed:
            while True:
                if self._calls:
                    return self._calls.popleft()
                hosting = self._read is not None
                if hosting and self._reader is None:
                    # Claimed for queued tasks too, so that the helper reads on if they run long.
                    self._reader = me
                elif not hosting and self._reader is me:
                    self._reader = None
                if self._queued:
                    tasks = list(self._queued)
                    self._queued.clear()
                    return tasks
                if hosting:
                    if self._reader is me:
                        return []
                    if not self._want_back:  # the helper reads: ask for reading back
                        self._want_back = True
                        self._interrupt.set()
                elif self._closed:
                    return None
                self._changed.wait()

    def _read_and_run(self) -> None:
        read = self._read
        if read is None:
            return
        tasks = read(self._interrupt.fd, self._may_read_on)
        if tasks is None:
            self._end_reading()
        elif tasks:
            self._run(tasks)
        else:
            self._interrupt.clear()

    def _run(self, tasks: Iterable[Task]) -> None:
        run_task, clock = self._run_task, time.monotonic
        assert run_task is not None, "run_tasks_with() was not called"
        for request, reply in tasks:
            # Per task, not per chunk: a long run of quick tasks (a 64 KiB chunk holds hundreds)
            # must not pass for a long task and hand reading to the helper for nothing.
            self._busy_since = clock()
            if self._guard_sleeping:  # read after the start is written: see _guard()
                with self._changed:
                    self._changed.notify_all()
            try:
                run_task(request, reply)
            except Exception:  # a broken reply callback must not stop the thread, as on a pool thread
                log.exception("task %s: error while answering it", request.task_id)
        self._busy_since = None
        self._last_work = time.monotonic()

    def _may_read_on(self) -> bool:
        """Whether the inline thread, having run what it read, may read stdin again at once (see :class:`ReadChunk`).

        Only while it still reads (the helper has not taken reading over) and nothing else
        waits for it: a call, queued tasks, closing, or an end to hosting.
        """
        return (
            self._reader is self.thread
            and self._read is not None
            and not self._calls
            and not self._queued
            and not self._closed
        )

    # --- the helper: guards the inline thread, and reads while it is busy --------------------

    def _guard(self) -> None:
        tick_s = self._hand_over_after_s / 2
        with self._changed:
            while not self._closed:
                busy_since = self._busy_since
                now = time.monotonic()
                if (
                    busy_since is not None
                    and self._reader is self.thread
                    and self._read is not None
                    and now - busy_since >= self._hand_over_after_s
                ):
                    self._reader = threading.current_thread()
                    log.debug("a task has held the reader for %.3fs; another thread reads on", now - busy_since)
                    self._changed.release()
                    try:
                        self._read_while_busy()
                    finally:
                        self._changed.acquire()
                elif busy_since is None and now - self._last_work > GUARD_IDLE_AFTER_S:
                    # The flag first, then one more look: _run() writes the start of a task, then
                    # reads the flag (without the lock), so one of the two sees the other.
                    self._guard_sleeping = True
                    if self._busy_since is None:
                        self._changed.wait()  # until the inline thread runs tasks again
                    self._guard_sleeping = False
                else:
                    self._changed.wait(tick_s)

    def _read_while_busy(self) -> None:
        """Read stdin and queue what it holds, until the inline thread wants reading back."""
        read = self._read
        while read is not None:
            tasks = read(self._interrupt.fd)
            if tasks == []:
                self._interrupt.clear()
            with self._changed:
                if tasks is None:
                    self._read = None
                elif tasks:
                    self._queued.extend(tasks)
                    self._changed.notify_all()
                if self._want_back or self._read is None or self._closed:
                    self._reader = None
                    self._want_back = False
                    self._changed.notify_all()
                    return
                read = self._read

    # --- both --------------------------------------------------------------------------------

    def _end_reading(self) -> None:
        with self._changed:
            self._read = None  # stdin is closed: nobody reads again
            self._reader = None
            self._changed.notify_all()

    def _wake_locked(self) -> None:
        """Wake whoever waits (called with the lock held), also a thread waiting on stdin."""
        self._changed.notify_all()
        if self._reader is not None:
            self._interrupt.set()


class Interrupt:
    """A pipe that ends a wait in poll: stdin's readers, and the process runner's loop, poll :attr:`fd` too."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)

    def set(self) -> None:
        """Wake the reader waiting on :attr:`fd`, or the next one to wait."""
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe already holds a wake-up
            os.write(self._write_fd, b"!")

    def clear(self) -> None:
        """Take back every wake-up, once a reader has seen them."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.fd, 4096):
                pass

    def close(self) -> None:
        """Only once no thread can wait on :attr:`fd` any more: a reused fd would be polled instead."""
        os.close(self.fd)
        os.close(self._write_fd)
