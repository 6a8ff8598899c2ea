"""The async runner's queue for a batch handler: tasks wait on the loop until a free slot takes them.

A batch forms where a free slot takes work (see :mod:`runqy.batching`); on the async
runner a slot is one batch call's coroutine, so this queue only says what a free slot
takes now, and wakes the runner with a loop timer when a short batch falls due::

    chunk from the reader ──put──> waiting, in arrival order ──take()── BatchSpec.take_now
                                     ▲                                ├─ a batch: one call in the free slot
                                     │                                └─ none yet: a timer wakes the runner at due()
    a call's retryable tasks ────────┘ after their backoff (a loop timer each; never a blocked loop)

Touched only on the loop thread, like the rest of the runner's state: no lock.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable, Iterable

from runqy.batch_attempts import BatchItem
from runqy.batching import BatchSpec

__all__ = ["WaitingBatches"]


class WaitingBatches:
    """Tasks of a batch handler not yet in a call: waiting for a slot, or backing off before a retry."""

    def __init__(self, spec: BatchSpec, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self.spec = spec
        self._loop = loop
        #: Called when tasks may be taken now: a short batch fell due, or a retry rejoined.
        self._wake = wake
        self._waiting: collections.deque[tuple[BatchItem, float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._backing_off: dict[int, tuple[asyncio.TimerHandle, BatchItem]] = {}
        self._keys = itertools.count()
        #: Set when the runner closes: no task will come any more, so a short batch waits for none.
        self.flushing = False

    def __len__(self) -> int:
        return len(self._waiting) + len(self._backing_off)

    def put(self, items: Iterable[BatchItem], arrived: float) -> None:
        """Queue tasks that arrived at ``arrived`` (monotonic seconds), behind those already waiting."""
        self._waiting.extend((item, arrived) for item in items)

    def take(self) -> list[BatchItem]:
        """What a free slot takes now, as :meth:`BatchSpec.take_now` decides; empty when nothing is to be taken yet.

        When a short batch must wait for more tasks, a loop timer calls ``wake`` at its due time.
        """
        waiting = self._waiting
        if not waiting:
            return []
        spec, oldest, now = self.spec, waiting[0][1], time.monotonic()
        size = min(len(waiting), spec.size) if self.flushing else spec.take_now(len(waiting), oldest, now)
        if not size:
            self._wake_at(spec.due(oldest), now)
            return []
        return [waiting.popleft()[0] for _ in range(size)]

    def retry_later(self, item: BatchItem, backoff_s: float) -> None:
        """Queue a task's next attempt once ``backoff_s`` has passed; it may then join any batch."""
        if backoff_s <= 0:
            self.put((item,), time.monotonic())
            return
        key = next(self._keys)
        self._backing_off[key] = (self._loop.call_later(backoff_s, self._rejoin, key), item)

    def close(self) -> list[BatchItem]:
        """Empty the queue and stop its timers; returns every task not yet in a call, for the runner to answer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for timer, _ in self._backing_off.values():
            timer.cancel()
        left = [item for item, _ in self._waiting] + [item for _, item in self._backing_off.values()]
        self._waiting.clear()
        self._backing_off.clear()
        return left

    def _wake_at(self, due: float, now: float) -> None:
        # One timer, for the earliest due batch: a later one would only wake the runner for nothing.
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._loop.call_later(due - now, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._wake()

    def _rejoin(self, key: int) -> None:
        _, item = self._backing_off.pop(key)
        self.put((item,), time.monotonic())
        self._wake()
