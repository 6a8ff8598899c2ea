"""How the Go worker reads a worker's stdout: lines cut from a pipe, and which of them it accepts.

The local driver reads exactly as strictly, so that what would fail in production
fails, or at least shows, on the developer's machine first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "DEFAULT_STARTUP_TIMEOUT_S",
    "MAX_STDERR_LINE_BYTES",
    "MAX_STDOUT_LINE_BYTES",
    "judge_stdout_line",
    "oversized",
    "pump_lines",
]

#: The Go worker waits this long for the ready line by default.
DEFAULT_STARTUP_TIMEOUT_S: Final = 60.0
#: The Go worker's stdout reader gives up for good on a longer line.
MAX_STDOUT_LINE_BYTES: Final = 10 * 1024 * 1024
#: The Go worker stops draining stderr at a longer line (and the child then blocks).
MAX_STDERR_LINE_BYTES: Final = 1024 * 1024
_READ_CHUNK_BYTES: Final = 1 << 16


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# NaN and Infinity are not JSON: the Go worker drops such a line and the task hangs.
_DECODE: Final = json.JSONDecoder(parse_constant=_reject_constant).decode


def pump_lines(fd: int, on_lines: Callable[[list[bytes]], None], on_oversized: Callable[[int], None]) -> None:
    """Read ``fd`` to its end, handing over the complete lines of each chunk at once.

    A line past :data:`MAX_STDOUT_LINE_BYTES` is not kept in memory: only its size is
    reported. A last line without its newline is still a line.
    """
    partial: list[bytes] = []
    partial_size = 0
    while chunk := _read(fd):
        *lines, rest = chunk.split(b"\n")
        if lines and partial:
            if partial_size + len(lines[0]) > MAX_STDOUT_LINE_BYTES:
                on_oversized(partial_size + len(lines[0]))
                lines.pop(0)
            else:
                lines[0] = b"".join([*partial, lines[0]])
            partial, partial_size = [], 0
        if lines:
            on_lines(lines)
        if rest:
            if partial_size <= MAX_STDOUT_LINE_BYTES:  # past the limit the line is garbage: keep its size only
                partial.append(rest)
            partial_size += len(rest)
    if partial_size > MAX_STDOUT_LINE_BYTES:
        on_oversized(partial_size)
    elif partial:
        on_lines([b"".join(partial)])


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, _READ_CHUNK_BYTES)
    except OSError:
        return b""  # closed under us while stopping: the same as end of file


def judge_stdout_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The JSON object the Go worker reads from a (non-blank) line, or None and why it would drop the line."""
    if len(raw) > MAX_STDOUT_LINE_BYTES:
        return None, oversized(len(raw))
    try:
        # Go replaces invalid UTF-8 instead of failing, so does this.
        message = _DECODE(raw.decode("utf-8", "replace"))
    except ValueError as exc:
        return None, f"a stdout line that is not JSON ({exc}): the Go worker drops it"
    if not isinstance(message, dict):
        return None, "a stdout line that is not a JSON object: the Go worker drops it"
    wrong = _wrong_types(message)
    if wrong:
        return None, f"a response with {wrong}: the Go worker drops it and the task hangs"
    return message, ""


def oversized(size: int) -> str:
    """Why a line of ``size`` bytes breaks the Go worker."""
    return f"a stdout line of {size} bytes: the Go worker's reader stops for good and every task hangs"


def _wrong_types(message: dict[str, Any]) -> str:
    """What makes the Go worker reject a response, or ``""``."""
    if "task_id" not in message:
        return ""  # a status line: tolerated
    if not isinstance(message["task_id"], str):
        return "a non-string task_id"
    if message.get("error") is not None and not isinstance(message["error"], str):
        return "a non-string error"
    if message.get("retry") is not None and not isinstance(message["retry"], bool):
        return "a non-boolean retry"
    return ""
