"""Inline execution: quick tasks of a one-at-a-time runner run in the thread that read them.

Handing requests from the reader thread to a runner thread costs more than a trivial
task: each batch changes threads (and often cores) and is parsed in one thread's cache
and run in another's. So, for a runner that runs one task at a time in this process
with no time limit (the sequential runner), the reader runs the tasks of each chunk
itself. Reading stdin must not wait for a handler, so a guard thread watches: when the
reader has been running tasks for longer than ``hand_over_after_s``, a fresh thread
takes over reading, and the old one finishes its tasks, then stops::

    reader ── read ── parse ── run them here ── read ── ...
                                   │ still running after hand_over_after_s (the guard sees it)
                                   ├── a fresh reader reads on; what it accepts meanwhile
                                   │   is queued for the running thread, in order
                                   └── the old thread runs its tasks and the queued ones, then ends

One task still runs at a time, in arrival order, and each is answered once by the
runner's own attempt loop, exactly as on the runner's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from runqy.protocol import TaskRequest
from runqy.runners.base import Reply

__all__ = ["InlineExecution"]

log = logging.getLogger("runqy")

#: How long the reader may be busy running tasks before another thread reads instead.
HAND_OVER_AFTER_S: Final = 0.01
#: The guard stops ticking after this long without inline work, so an idle worker sleeps.
_GUARD_IDLE_AFTER_S: Final = 1.0

Task = tuple[TaskRequest, Reply]


class InlineExecution:
    """Runs tasks in the reading thread, and moves reading to a fresh thread when they take long.

    ``run_task`` runs one task to its end in the calling thread and answers it;
    ``start_reader`` starts a new thread that reads stdin from where the last one
    stopped. :meth:`run` is called by the reader with each chunk's tasks.
    """

    def __init__(
        self,
        run_task: Callable[[TaskRequest, Reply], object],
        start_reader: Callable[[], threading.Thread],
        hand_over_after_s: float = HAND_OVER_AFTER_S,
    ) -> None:
        self._run_task = run_task
        self._start_reader = start_reader
        self._hand_over_after_s = hand_over_after_s
        self._changed = threading.Condition(threading.Lock())
        #: The thread allowed to read stdin; None until the first reader runs tasks.
        self._reader: threading.Thread | None = None
        #: The thread running tasks now, if any: only one does, as the runner promises.
        self._executor: threading.Thread | None = None
        #: When the reader began running its current tasks; None while it is not running any.
        self._reader_busy_since: float | None = None
        #: Tasks accepted by a new reader while an older thread still runs tasks.
        self._backlog: list[Task] = []
        self._last_work = time.monotonic()
        self._guard_sleeping = False
        self._closed = False
        self._guard = threading.Thread(target=self._watch, name="runqy-read-guard", daemon=True)
        self._guard.start()

    def run(self, tasks: list[Task]) -> bool:
        """Run a chunk's tasks, in the calling reader thread unless another thread is running tasks.

        Returns False when another thread took over reading meanwhile: the caller must
        then stop reading.
        """
        me = threading.current_thread()
        with self._changed:
            if self._reader is None:
                self._reader = me
            if self._executor is not None:
                # An earlier reader is still running tasks: it takes these next, in order.
                self._backlog += tasks
                return True
            self._executor = me
            self._reader_busy_since = time.monotonic()
            if self._guard_sleeping:
                self._changed.notify()
        while True:
            for request, reply in tasks:
                try:
                    self._run_task(request, reply)
                except Exception:  # a broken reply callback must not stop reading, as on a runner thread
                    log.exception("task %s: error while answering it", request.task_id)
            with self._changed:
                tasks, self._backlog = self._backlog, []
                if not tasks:
                    self._executor = None
                    self._reader_busy_since = None
                    self._last_work = time.monotonic()
                    return self._reader is me

    def close(self) -> None:
        """Stop the guard; tasks being run go on to their end."""
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _watch(self) -> None:
        """The guard: hands reading over when the reader has been running tasks for too long."""
        tick_s = self._hand_over_after_s / 2
        with self._changed:
            while not self._closed:
                busy_since = self._reader_busy_since
                now = time.monotonic()
                if busy_since is not None and now - busy_since >= self._hand_over_after_s:
                    self._hand_over()
                if busy_since is None and now - self._last_work > _GUARD_IDLE_AFTER_S:
                    self._guard_sleeping = True
                    self._changed.wait()  # until a reader runs tasks again
                    self._guard_sleeping = False
                else:
                    self._changed.wait(tick_s)

    def _hand_over(self) -> None:
        # Called with the lock held: the old reader cannot finish and read again meanwhile.
        log.debug("a task has held the reader for %gs or more; another thread reads on", self._hand_over_after_s)
        self._reader_busy_since = None  # the running thread is no longer the reader: nothing to watch
        self._reader = self._start_reader()
