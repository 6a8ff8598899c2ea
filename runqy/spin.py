"""Spin-then-sleep waits: poll for a short while before sleeping, when recent waits were that short.

A thread that sleeps in ``poll()`` costs the thread that wakes it a wake-up inside its
``write`` (about 17 µs on a virtual machine, where waking an idle CPU is a trap to the
host), and costs itself the scheduler's latency before it runs again. When the next
request or answer is only tens of microseconds away, as it is between the Go worker and
a worker answering quick tasks, a thread that keeps polling for that long sees it at
once and spares both: through the Go worker's own code, at one task in flight, the
process runner's p50 went from about 225 to about 150 µs.

Polling burns the CPU it waits on, so it is adaptive: a :class:`SpinWait` polls only
while its recent waits were shorter than its window, and an idle worker, or one whose
tasks arrive further apart than the window, sleeps at once as before. It is still off
by default (``spin_wait_us = 0``): it pays only where a core would otherwise be idle.
With one busy process beside the worker, the same polling cost the sequential runner
a third of its throughput, taking the CPU the Go worker's own threads needed
(docs/runners.md).
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Sized
from typing import Final, TypeVar

__all__ = ["SpinWait", "in_seconds"]

#: Weight of the latest wait in the running estimate: a few short waits in a row start spinning.
_LATEST_WEIGHT: Final = 0.25

Ready = TypeVar("Ready", bound=Sized)


class SpinWait:
    """Waits through a ``poll(timeout_s)`` function, polling without a timeout first while waits are short.

    ``poll(0)`` must return at once, ``poll(None)`` wait without limit; either returns what is
    ready (empty when nothing is). One instance per waiting thread: it is not thread-safe.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        # Recent waits, each counted as at most twice the window: a long idle spell stops
        # spinning at once, and a few short waits after it start it again.
        self._typical_s = 2 * window_s

    @property
    def spinning(self) -> bool:
        """Whether the next wait polls before it sleeps."""
        return self._typical_s < self.window_s

    def wait(self, poll: Callable[[float | None], Ready], timeout_s: float | None = None) -> Ready:
        """What ``poll`` found ready within ``timeout_s`` (None: no limit)."""
        if timeout_s == 0 or not self.window_s:
            return poll(timeout_s)
        start = time.monotonic()
        if self.spinning:
            spin_until = start + (self.window_s if timeout_s is None else min(self.window_s, timeout_s))
            while not (ready := poll(0)):
                if time.monotonic() >= spin_until:
                    break
            else:
                self._waited(time.monotonic() - start)
                return ready
        left_s = None if timeout_s is None else max(0.0, start + timeout_s - time.monotonic())
        ready = poll(left_s)
        self._waited(time.monotonic() - start)
        return ready

    def _waited(self, waited_s: float) -> None:
        self._typical_s += (min(waited_s, 2 * self.window_s) - self._typical_s) * _LATEST_WEIGHT


def in_seconds(poller: select.poll) -> Callable[[float | None], list[tuple[int, int]]]:
    """``poller.poll`` taking its timeout in seconds, as :meth:`SpinWait.wait` passes it (``poll`` takes ms)."""
    return lambda timeout_s: poller.poll(None if timeout_s is None else timeout_s * 1000)
