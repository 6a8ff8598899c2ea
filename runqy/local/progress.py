"""A progress bar for long local runs, drawn on stderr only when stderr is a terminal.

A dozen lines of ANSI do this job: a dependency would add nothing a user sees. The
bar is redrawn at most ten times a second, appears only once a run has lasted half a
second, and lines the worker logs meanwhile are printed above it, not through it.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import Final, TextIO

from runqy.local.stats import RunSummary

__all__ = ["Progress"]

_REDRAW_EVERY_S: Final = 0.1
#: Short runs finish before a bar would help; it only appears after this.
_SHOW_AFTER_S: Final = 0.5
_CLEAR_LINE: Final = "\r\x1b[K"


class Progress:
    """Shows how far a run is; a no-op when ``stream`` is not a terminal."""

    def __init__(self, stream: TextIO, total: int | None, label: str = "runqy local") -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.enabled = stream.isatty()
        self._started = time.perf_counter()
        self._drawn_at = 0.0
        self._shown = ""
        # The worker's stderr lines arrive on another thread; they and the bar share the terminal.
        self._lock = threading.Lock()

    def begin(self) -> None:
        """Start the clock: rates and the half-second delay count from here (after the worker's start-up)."""
        self._started = time.perf_counter()

    def update(self, summary: RunSummary) -> None:
        """Redraw from the counts so far, if it is time to."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._drawn_at < _REDRAW_EVERY_S or now - self._started < _SHOW_AFTER_S:
            return
        self._drawn_at = now
        with self._lock:
            self._shown = self._render(summary, now - self._started)
            self.stream.write(_CLEAR_LINE + self._shown)
            self.stream.flush()

    def print_above(self, line: str) -> None:
        """Print a line (a worker's log line) without breaking the bar."""
        with self._lock:
            if self._shown:
                self.stream.write(_CLEAR_LINE)
            self.stream.write(line + "\n")
            if self._shown:
                self.stream.write(self._shown)
            self.stream.flush()

    def close(self) -> None:
        """Remove the bar, leaving the terminal as it was."""
        with self._lock:
            if self._shown:
                self.stream.write(_CLEAR_LINE)
                self.stream.flush()
            self._shown = ""
            self.enabled = False

    def _render(self, summary: RunSummary, elapsed_s: float) -> str:
        done = summary.total
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        counts = f"ok {summary.count('ok')} failed {summary.count('failed') + summary.count('retryable')}"
        if summary.count("lost"):
            counts += f" lost {summary.count('lost')}"
        if not self.total:
            return f"{self.label}: {done} tasks, {rate:.0f}/s, {counts}"
        fraction = min(1.0, done / self.total)
        eta_s = (self.total - done) / rate if rate > 0 else 0.0
        tail = f" {done}/{self.total} {fraction:4.0%} {rate:.0f}/s {counts} eta {_clock(eta_s)}"
        width = max(10, shutil.get_terminal_size().columns - len(self.label) - len(tail) - 5)
        filled = int(width * fraction)
        return f"{self.label} [{'#' * filled}{'.' * (width - filled)}]{tail}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"
