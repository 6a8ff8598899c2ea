"""Dynamic batching: how many waiting tasks a free slot takes into one handler call.

A batch forms where a free slot takes work: a pool thread taking from its queue, the
process scheduler dispatching to a free child. Both ask the one rule here::

    tasks waiting ──> free slot ──> BatchSpec.take_now(waiting, oldest arrival, now)
                                      ├─ batch_size or more waiting: take batch_size
                                      ├─ fewer, and max_wait_s has passed since the
                                      │  oldest arrived: take them all
                                      └─ else: wait for more, until that moment

With ``max_wait_s == 0`` a free slot takes whatever is waiting at once: at low load a
task is never delayed, and under load batches grow by themselves because tasks pile
up while every slot is busy. A layer in front of the runner could not see free slots
and would have to wait at low load.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["BatchSpec", "gather"]

T = TypeVar("T")


@dataclass(frozen=True)
class BatchSpec:
    """How a batch handler's calls are filled: at most ``size`` tasks, waiting at most ``max_wait_s`` for more."""

    size: int
    max_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"batch_size={self.size}: expected an integer of 1 or more")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_ms={self.max_wait_s * 1000:g}: expected 0 or more milliseconds")

    def take_now(self, waiting: int, oldest_arrived: float, now: float) -> int:
        """How many of ``waiting`` tasks a free slot takes now; 0 means wait until :meth:`due`."""
        if waiting >= self.size:
            return self.size
        if waiting and now >= oldest_arrived + self.max_wait_s:
            return waiting
        return 0

    def due(self, oldest_arrived: float) -> float:
        """When a batch short of ``size`` goes out anyway (monotonic seconds)."""
        return oldest_arrived + self.max_wait_s


def gather(spec: BatchSpec, first: T, first_arrived: float, take: Callable[[float], T | None]) -> tuple[list[T], bool]:
    """Fill a batch that starts with ``first`` from a queue, as :meth:`BatchSpec.take_now` decides.

    ``take(timeout_s)`` returns the next queued item (``timeout_s`` 0: only one already
    waiting), None for the queue's stop mark, or raises :class:`queue.Empty`. Returns
    the batch, and whether the stop mark was met while filling it: the caller stops
    after running the batch.
    """
    batch = [first]
    while len(batch) < spec.size:
        now = time.monotonic()
        # What is queued already is taken at once; the wait is only for tasks not yet here.
        timeout_s = 0.0 if spec.take_now(len(batch), first_arrived, now) else spec.due(first_arrived) - now
        try:
            item = take(timeout_s)
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False
