"""A timeline picture of benchmark runs as SVG: one row per worker slot, one bar per task.

The driver knows when it sent each request and when the answer came; the worker told
it at start-up how many tasks it runs at once. Slots are reconstructed from that: a
task starts when it was sent or when a slot became free, whichever is later, and ends
when it was answered, with each task put in the slot that freed up most recently
before it was sent (so bars pack into few rows). For a first-in-first-out runner this
is what happened; for others it is a close picture. The grey lead-in of a bar is time
the task waited in the worker's queue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Final

from runqy.local.stats import Outcome

__all__ = ["Bar", "assign_slots", "write_svg"]

_WIDTH: Final = 1000
_LABEL_W: Final = 110
_ROW_H: Final = 12
_GAP_H: Final = 28
_COLOURS: Final = {"ok": "#3b7dd8", "failed": "#d8483b", "retryable": "#e0a030", "lost": "#888888"}
#: Past this many rows a runner's block is cut: the picture is for seeing the pattern.
_MAX_ROWS: Final = 64


@dataclass(frozen=True)
class Bar:
    """One task on the timeline; times in seconds from the start of its run."""

    slot: int
    queued_s: float
    start_s: float
    end_s: float
    status: str


def assign_slots(outcomes: Sequence[Outcome], capacity: int | None) -> list[Bar]:
    """Place each task in a slot (see the module docstring); ``capacity`` None means one slot per in-flight task."""
    if not outcomes:
        return []
    origin = min(o.sent_at for o in outcomes)
    free_at: list[float] = []  # per slot: when its last task ended
    bars = []
    for outcome in sorted(outcomes, key=lambda o: (o.answered_at, o.sent_at)):
        sent, end = outcome.sent_at - origin, outcome.answered_at - origin
        idle = [i for i, t in enumerate(free_at) if t <= sent]
        if idle:
            slot = max(idle, key=lambda i: free_at[i])
        elif capacity is None or len(free_at) < capacity:
            free_at.append(0.0)
            slot = len(free_at) - 1
        else:
            slot = min(range(len(free_at)), key=lambda i: free_at[i])
        start = min(end, max(sent, free_at[slot]))
        free_at[slot] = end
        bars.append(Bar(slot, sent, start, end, outcome.status))
    return bars


def write_svg(path: Path, runs: Sequence[tuple[str, list[Bar]]]) -> None:
    """Write one block per run, all on the same time scale, so faster runs end further left."""
    span_s = max((bar.end_s for _, bars in runs for bar in bars), default=0.0) or 1.0
    scale = (_WIDTH - _LABEL_W - 20) / span_s
    parts: list[str] = []
    y = 30
    for name, bars in runs:
        rows = min(_MAX_ROWS, 1 + max((bar.slot for bar in bars), default=0))
        parts.append(f'<text x="4" y="{y + 10}" font-weight="bold">{escape(name)}</text>')
        slots = f"{rows} slot{'s' if rows != 1 else ''}"
        parts.append(f'<text x="4" y="{y + 24}" fill="#555">{len(bars)} tasks, {slots}</text>')
        for bar in bars:
            if bar.slot >= rows:
                continue
            top = y + bar.slot * _ROW_H
            x_queued, x_start = _LABEL_W + bar.queued_s * scale, _LABEL_W + bar.start_s * scale
            width = max(0.5, (bar.end_s - bar.start_s) * scale)
            if bar.start_s > bar.queued_s:
                parts.append(
                    f'<rect x="{x_queued:.1f}" y="{top + 4}" width="{x_start - x_queued:.1f}" height="2" fill="#ccc"/>'
                )
            parts.append(
                f'<rect x="{x_start:.1f}" y="{top + 1}" width="{width:.1f}" height="{_ROW_H - 2}" '
                f'fill="{_COLOURS.get(bar.status, "#000")}" stroke="#fff" stroke-width="0.3"/>'
            )
        y += max(rows * _ROW_H, 30) + _GAP_H
    parts.extend(_axis(y, span_s, scale))
    height = y + 30
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="11">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n'
        f'<text x="4" y="16" font-size="13">runqy bench timeline: one row per worker slot, one bar per task '
        f"(grey: waiting in the worker)</text>\n" + "\n".join(parts) + "\n</svg>\n"
    )
    path.write_text(svg)


def _axis(y: int, span_s: float, scale: float) -> list[str]:
    step = _nice_step(span_s / 8)
    parts = [f'<line x1="{_LABEL_W}" y1="{y}" x2="{_WIDTH - 20}" y2="{y}" stroke="#333"/>']
    tick = 0.0
    while tick <= span_s + 1e-9:
        x = _LABEL_W + tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#333"/>')
        parts.append(f'<text x="{x:.1f}" y="{y + 16}" text-anchor="middle">{tick:g} s</text>')
        tick = round(tick + step, 9)
    return parts


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    magnitude = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
