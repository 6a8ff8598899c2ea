"""Bookkeeping of crashes: which tasks brought down children (poison), and how often children die (crash loops)."""

from __future__ import annotations

import collections
import time
from typing import Final

__all__ = ["POISON_CRASHES", "CrashLedger"]

#: A task that brought down this many children is answered as poison (``retry: false``).
POISON_CRASHES: Final = 2
#: Crash counts are kept for this many recent task ids: the Go worker redelivers a task under its id.
_REMEMBERED_TASKS: Final = 4096


class CrashLedger:
    """Counts child deaths per task id and in a sliding time window."""

    def __init__(self, limit: int, window_s: float) -> None:
        #: This many unexpected child deaths within ``window_s`` seconds, with no task answered
        #: in between, are a crash loop.
        self.limit = limit
        self.window_s = window_s
        self._deaths: collections.deque[float] = collections.deque()
        self._by_task: collections.OrderedDict[str, int] = collections.OrderedDict()

    def task_crashed(self, task_id: str) -> int:
        """Count a child death while running ``task_id``; returns how many that task has caused."""
        crashes = self._by_task.pop(task_id, 0) + 1
        self._by_task[task_id] = crashes
        while len(self._by_task) > _REMEMBERED_TASKS:
            self._by_task.popitem(last=False)
        return crashes

    def of_task(self, task_id: str) -> int:
        return self._by_task.get(task_id, 0)

    def is_poison(self, task_id: str) -> bool:
        """True once the task brought down POISON_CRASHES children: it is not run again."""
        return self._by_task.get(task_id, 0) >= POISON_CRASHES

    def mark_poison(self, task_id: str) -> None:
        """The task was shown to bring down children (alone, after its batch crashed one): it is not run again."""
        self._by_task.pop(task_id, None)
        self._by_task[task_id] = POISON_CRASHES

    def forget(self, task_id: str) -> None:
        """The task succeeded: whatever killed children before was not the task."""
        self._by_task.pop(task_id, None)

    def made_progress(self) -> None:
        """A child answered a task: deaths before it do not count towards a crash loop.

        A loop is children dying without getting work done; a steady share of crashing
        tasks among tasks that are answered is the poison rule's business, not a loop.
        """
        self._deaths.clear()

    def child_died(self) -> bool:
        """Count an unexpected child death; True when that makes a crash loop (no task answered between)."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.window_s:
            self._deaths.popleft()
        return len(self._deaths) >= self.limit

    @property
    def recent(self) -> int:
        """Child deaths within the window."""
        return len(self._deaths)
