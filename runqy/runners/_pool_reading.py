"""Stdin read by the thread pool's own threads, one at a time, so that a quick task is never handed between threads.

A separate reader thread cost the thread runner two hand-offs per task (reader to pool
thread, pool thread to the writer), and with the GIL every hand-off is a wake-up and a
switch. Here reading is one more kind of work in the pool's queue, the *read turn*.
The thread that takes it holds it: it reads, runs what it read one task after another
(each request parsed just before it runs), answers each as it finishes, and reads on::

    pool thread ── takes the turn ── read ── run, answer ── run, answer ── read ── ...
                                                  │ one task has run hand_over_after_s
    guard ── takes the turn away: it goes back to the pool's queue; the idle thread (or
             a new one, up to max_threads) that takes it runs the requests read and not
             started yet, then reads on, while the slow task finishes where it is (the
             tasks of a burst, accepted whole, go to the queue ahead of it, for any thread)

So with quick tasks one thread reads, runs and answers with no hand-off at all, and a
slow task keeps neither stdin unread nor the tasks behind it waiting for longer than
``hand_over_after_s`` (1 ms, below the GIL's own switch interval of 5 ms). Once a task
has run 10 ms, for the next second the holder passes the turn on before each task it
runs: where tasks are slow, the tasks read together run on as many threads at once, and
a wake-up per task costs little next to them. Only one thread reads at a time: the one
holding the turn, waiting on stdin and on an interrupt pipe, so that stopping never
waits for another request.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Final

from runqy.inline import GUARD_IDLE_AFTER_S, Interrupt, ReadChunk, ReadOn, Task
from runqy.protocol import TaskRequest
from runqy.runners.base import Reply

__all__ = ["HAND_OVER_AFTER_S", "READ_TURN", "ReadTurn"]

log = logging.getLogger("runqy")

#: How long one task may run while its thread holds the read turn before the guard takes the turn away.
HAND_OVER_AFTER_S: Final = 0.001
#: A task that ran this long (longer than a quick one whose thread was merely descheduled,
#: on a busy machine) makes the holder, for ``_EAGER_FOR_S``, pass the turn to the other
#: threads before each task it runs: where tasks are slow a wake-up costs little, and no
#: task then waits even ``HAND_OVER_AFTER_S`` behind another.
_SLOW_TASK_S: Final = 0.01
_EAGER_FOR_S: Final = 1.0

#: Runs one task to its end in the calling thread and answers it; False when that thread was abandoned.
RunHeld = Callable[[TaskRequest, Reply], bool]
#: Called with the pool's lock held: queue these tasks, then the turn, for the pool's threads; False once closed.
HandOver = Callable[[list[Task]], bool]


class _ReadTurnToken:
    """The type of :data:`READ_TURN`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "READ_TURN"


#: Queued in the pool's work queue while it hosts reading: the thread that takes it holds the read turn.
READ_TURN: Final = _ReadTurnToken()


class ReadTurn:
    """The read turn of one pool: who holds it, and its guard.

    ``lock`` is the pool's: the turn changes hands only under it, so that two threads
    never read at once. The requests the holder read and has not started stay with the
    serving loop (see :class:`~runqy.inline.ReadChunk`): the next read, by whichever
    thread holds the turn then, runs them first.
    """

    def __init__(self, lock: threading.Lock, hand_over: HandOver, hand_over_after_s: float = HAND_OVER_AFTER_S) -> None:
        self._lock = lock
        self._hand_over = hand_over
        self._hand_over_after_s = hand_over_after_s
        #: How to read stdin while hosted and stdin is open; None otherwise.
        self.read: ReadChunk | None = None
        #: The turn is queued or held (so hosting again never queues a second one). Under the lock.
        self.out = False
        self._holder: threading.Thread | None = None
        #: Tasks the holder read already accepted and has not started (see hold()); its own,
        #: until the guard takes them away. Requests read in turn wait in the serving loop instead.
        self._held: collections.deque[Task] = collections.deque()
        #: When the holder's current task started; None while it reads. Written by the holder
        #: without the lock, in a cell of its own: a former holder finishing its slow task
        #: must not overwrite what the current holder wrote.
        self._busy: list[float | None] = [None]
        self._last_work = time.monotonic()
        #: Until then, the holder passes the turn on before each task it runs (see _EAGER_FOR_S).
        self._eager_until = 0.0
        self._wake_guard = threading.Condition(lock)
        self._guard_sleeping = False
        self._guard: threading.Thread | None = None
        self._stopped = False
        self._interrupt = Interrupt()

    def host(self, read: ReadChunk) -> bool:
        """Read with ``read`` from now on; True when the caller must queue the turn. Called with the lock held."""
        self.read = read
        if self._guard is None:
            self._guard = threading.Thread(target=self._watch, name="runqy-read-guard", daemon=True)
            self._guard.start()
        if self.out:
            return False
        self.out = True
        return True

    def stop_hosting(self) -> None:
        """No further reads; a read under way returns at once (interrupted)."""
        self.read = None
        self._interrupt.set()

    def hold(self, run: RunHeld) -> bool:
        """Hold the turn in the calling thread until it is taken away or reading stops; False if abandoned."""
        me = threading.current_thread()
        busy: list[float | None] = [None]
        with self._lock:
            self._holder = me
            self._busy = busy
        read_on = partial(self._holds, me)
        while self._may_read(me):
            tasks = self._read_once(read_on)
            if isinstance(tasks, list):  # accepted whole (a burst, say)
                alone = self._hold_accepted(tasks)
                if alone is not None:
                    return run(*alone)  # no longer the holder: back to the queue after it
                tasks = self._take_held()
            for request, reply in tasks:
                started = busy[0] = time.monotonic()
                if started < self._eager_until and self._hand_out([]):
                    return run(request, reply)  # as above; the requests read after it go to the next holder
                if self._guard_sleeping:
                    with self._lock:
                        self._wake_guard.notify()
                if not run(request, reply):
                    self._abandoned(me)
                    return False
                busy[0] = None
                if self._holder is not me:  # the guard took the turn (and the tasks held) meanwhile
                    if time.monotonic() - started >= _SLOW_TASK_S:
                        self._eager_until = time.monotonic() + _EAGER_FOR_S
                    return True
        return True

    def _abandoned(self, me: threading.Thread) -> None:
        """``me`` was abandoned after a timeout: the turn, and the tasks it holds, go to the other threads."""
        with self._lock:
            if self._holder is me:
                self._take_turn_away()

    def _hold_accepted(self, tasks: list[Task]) -> Task | None:
        """Hold tasks read and accepted already where the guard can take them away too.

        While eager (see _EAGER_FOR_S), hand all but the first to the other threads instead,
        and return that one, for the caller to run.
        """
        if tasks and time.monotonic() < self._eager_until and self._hand_out(tasks[1:]):
            return tasks[0]
        self._held.extend(tasks)
        return None

    def _take_held(self) -> Iterator[Task]:
        """The held tasks, one at a time, until none is left (the guard may take them away meanwhile)."""
        held = self._held
        with contextlib.suppress(IndexError):
            while True:
                yield held.popleft()

    def _holds(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` still holds the turn: it may read on (see :class:`~runqy.inline.ReadChunk`)."""
        return self._holder is thread

    def _may_read(self, me: threading.Thread) -> bool:
        """Whether ``me`` still holds the turn and should read; ends the turn when reading stopped."""
        with self._lock:  # the guard takes the turn only under the lock, and never from a reader
            if self._holder is not me:
                return False
            if self.read is None:
                self._holder = None
                self.out = False
                return False
            return True

    def _hand_out(self, rest: list[Task]) -> bool:
        """Queue ``rest``, then the turn, for the other threads now; False once the pool is closed."""
        with self._lock:
            if not self._hand_over(rest):
                return False
            self._holder = None
            self._busy = [None]
            return True

    def _read_once(self, read_on: ReadOn) -> Iterable[Task]:
        read = self.read
        if read is None:
            return ()
        tasks = read(self._interrupt.fd, read_on)
        if tasks is None:
            with self._lock:
                self.read = None  # stdin is closed: nobody reads again
            return ()
        if not tasks:  # interrupted: an empty list
            self._interrupt.clear()
        return tasks

    def _watch(self) -> None:
        """The guard: takes the turn from a holder whose task runs long.

        It looks once per ``hand_over_after_s`` while the holder reads, and at the
        running task's due time while one runs: a task is handed over between one and
        two ``hand_over_after_s`` after it started, for about a thousand wake-ups a second.
        """
        limit_s = self._hand_over_after_s
        with self._lock:
            while not self._stopped:
                busy_since, now = self._busy[0], time.monotonic()
                wait_s = limit_s
                if busy_since is not None:
                    self._last_work = now
                    if now - busy_since < limit_s:
                        wait_s = busy_since + limit_s - now
                    elif self._holder is not None:
                        self._take_turn_away()
                elif now - self._last_work > GUARD_IDLE_AFTER_S:
                    # The flag first, then one more look: the holder writes its start, then reads
                    # the flag (without the lock), so one of the two sees the other.
                    self._guard_sleeping = True
                    if self._busy[0] is None:
                        self._wake_guard.wait()  # until the holder runs a task again
                    self._guard_sleeping = False
                    continue
                self._wake_guard.wait(wait_s)

    def _take_turn_away(self) -> None:
        held = self._held
        tasks = []
        with contextlib.suppress(IndexError):  # the holder may pop one meanwhile: it runs that one itself
            while held:
                tasks.append(held.popleft())
        if self._hand_over(tasks):
            log.debug("a task has held the read turn for %gs; other threads read on", self._hand_over_after_s)
            self._holder = None
            self._busy = [None]
        else:  # the pool is closed: the holder runs what it read itself
            held.extendleft(reversed(tasks))

    def close(self) -> None:
        """Stop the guard and release the interrupt pipe; only once no thread can read any more."""
        with self._lock:
            self._stopped = True
            self._wake_guard.notify()
        if self._guard is not None:
            self._guard.join()
        self._interrupt.close()
