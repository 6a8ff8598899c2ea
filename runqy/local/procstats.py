"""CPU time and peak memory of a worker's whole process tree while a benchmark runs (psutil)."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Final

import psutil

__all__ = ["TreeSampler", "TreeUsage"]

#: Often enough to catch a child's peak, rarely enough not to steal a core from the worker on 2-core machines.
_SAMPLE_EVERY_S: Final = 0.1


@dataclass(frozen=True)
class TreeUsage:
    """What a process tree used between :meth:`TreeSampler.start` and :meth:`TreeSampler.stop`."""

    #: Processes seen in the tree (the worker and its children, also those that exited meanwhile).
    processes: int
    #: User + system CPU seconds of the whole tree.
    cpu_s: float
    #: Largest resident set of any one process of the tree.
    peak_rss_bytes: int


class TreeSampler:
    """Samples a process and its descendants in a background thread."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runqy-bench-sampler", daemon=True)

    def start(self) -> None:
        """Take the CPU baseline now (start-up and warm-up are not counted) and start sampling."""
        self._sample(baseline=True)
        self._thread.start()

    def stop(self) -> TreeUsage:
        self._stop.set()
        self._thread.join()
        self._sample()
        cpu_s = sum(last - self._cpu_start.get(pid, 0.0) for pid, last in self._cpu_last.items())
        return TreeUsage(len(self._cpu_last), cpu_s, self._peak_rss)

    def _loop(self) -> None:
        while not self._stop.wait(_SAMPLE_EVERY_S):
            self._sample()

    def _sample(self, *, baseline: bool = False) -> None:
        try:
            tree = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return  # the worker is gone: the last sample stands
        for proc in tree:
            # Keep one Process object per pid: psutil uses it to notice a pid reused by another process.
            proc = self._procs.setdefault(proc.pid, proc)
            # A child may exit between listing and reading: it simply has no newer sample.
            with contextlib.suppress(psutil.Error):
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu = times.user + times.system
                    rss = proc.memory_info().rss
                if baseline:
                    self._cpu_start[proc.pid] = cpu
                self._cpu_last[proc.pid] = cpu
                self._peak_rss = max(self._peak_rss, rss)
