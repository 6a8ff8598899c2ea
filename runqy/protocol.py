"""The wire contract with the Go worker: typed messages, their codec, and the channel that owns stdout.

One JSON object per line. Requests come on stdin; the ready status and responses go
to the real stdout, which :meth:`ProtocolChannel.claim_stdout` takes away from the
rest of the process so that nothing else (``print()``, C libraries, subprocesses)
can write into the protocol stream.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, Final

import pydantic_core

from runqy.errors import ProtocolError

__all__ = [
    "MAX_LINE_BYTES",
    "ProtocolChannel",
    "TaskRequest",
    "TaskResponse",
    "encode_response",
    "error_status_line",
    "parse_request",
    "READY_LINE",
]

log = logging.getLogger("runqy")

#: The Go worker's stdout scanner gives up for good on a longer line, hanging every later task.
MAX_LINE_BYTES: Final = 10 * 1024 * 1024
#: Error texts (tracebacks of huge reprs) are cut to this, keeping head and tail.
MAX_ERROR_CHARS: Final = 64 * 1024
#: A task id this long is not a task id; salvaging one from a broken line stops here.
_MAX_SALVAGED_ID_CHARS: Final = 256
_SALVAGE_TASK_ID = re.compile(rb'"task_id"\s*:\s*"([^"\\\r\n]{1,%d})"' % _MAX_SALVAGED_ID_CHARS)
_EXPECTED = 'expected one JSON object per line, like {"task_id": "...", "payload": ...}'

# Reused for every response: building an encoder per call costs more than encoding a small result.
_ENCODER: Final = json.JSONEncoder(allow_nan=False, separators=(",", ":"))

READY_LINE: Final = b'{"status":"ready"}\n'


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task as the Go worker sends it."""

    task_id: str
    payload: Any = None
    type: str = ""
    queue: str = ""
    retry_count: int = 0
    max_retry: int = 0


@dataclass(frozen=True, slots=True)
class TaskResponse:
    """The answer to one task: success when ``error`` is None."""

    task_id: str
    result: Any = None
    error: str | None = None
    retry: bool = False

    @classmethod
    def failure(cls, task_id: str, error: str, *, retry: bool = False) -> TaskResponse:
        """An error response; an empty message would read as success, so it never is empty."""
        return cls(task_id, None, error or "task failed without a message", retry)


# (field, expected Python type, what to say) for the optional request fields.
_FIELDS: Final = (
    ("type", str, "a string"),
    ("queue", str, "a string"),
    ("retry_count", int, "an integer"),
    ("max_retry", int, "an integer"),
)


def parse_request(line: bytes) -> TaskRequest:
    """Parse one request line; raises :class:`ProtocolError` saying what was wrong.

    The error carries ``task_id`` when one could be read from the line, so that the
    Go worker's pending task is failed at once instead of waiting for its deadline.
    """
    try:
        data = pydantic_core.from_json(line)
    except ValueError as exc:
        raise _bad(line, f"invalid request: not valid JSON ({exc}); {_EXPECTED}") from None
    if not isinstance(data, dict):
        raise _bad(line, f"invalid request: got a JSON {_json_kind(data)}; {_EXPECTED}")
    task_id = data.get("task_id")
    if not isinstance(task_id, str):
        what = "missing task_id" if task_id is None else f"task_id must be a string, got a JSON {_json_kind(task_id)}"
        raise _bad(line, f"invalid request: {what}; {_EXPECTED}")
    for name, expected_type, expected in _FIELDS:
        value = data.get(name)
        if value is not None and (type(value) is not expected_type):
            raise ProtocolError(f"invalid request: {name} must be {expected}, got a JSON {_json_kind(value)}", task_id)
    return TaskRequest(
        task_id=task_id,
        payload=data.get("payload"),
        type=data.get("type") or "",
        queue=data.get("queue") or "",
        retry_count=data.get("retry_count") or 0,
        max_retry=data.get("max_retry") or 0,
    )


def _bad(line: bytes, message: str) -> ProtocolError:
    match = _SALVAGE_TASK_ID.search(line)
    return ProtocolError(message, match.group(1).decode("utf-8", "replace") if match else "")


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def encode_response(response: TaskResponse) -> bytes:
    """Encode a response as one line of strict JSON; never raises, never exceeds MAX_LINE_BYTES.

    A result that is not JSON (a set, NaN, an arbitrary object) or that would make the
    line too long for the Go worker becomes an error response that says so.
    """
    task_id = _ENCODER.encode(response.task_id)
    error = None if response.error is None else _clip(response.error)
    try:
        result = _ENCODER.encode(response.result)
    except (TypeError, ValueError, RecursionError) as exc:
        result, error = (
            "null",
            _clip(
                f"result is not JSON: {exc}; return dicts, lists, strings, finite numbers, booleans or None"
                + (f" (the handler's own error was: {error})" if error else "")
            ),
        )
        response = TaskResponse(response.task_id, None, error, False)
    line = _line(task_id, result, error, response.retry)
    if len(line) < MAX_LINE_BYTES:
        return line
    error = (
        f"result is {len(line) / 2**20:.1f} MiB as JSON; a response line must stay under "
        f"{MAX_LINE_BYTES // 2**20} MiB (the Go worker's limit): store large outputs elsewhere and return a reference"
    )
    return _line(task_id, "null", error, False)


def _line(task_id: str, result: str, error: str | None, retry: bool) -> bytes:
    error_json = "null" if error is None else _ENCODER.encode(error)
    retry_json = "true" if retry else "false"
    text = f'{{"task_id":{task_id},"result":{result},"error":{error_json},"retry":{retry_json}}}\n'
    return text.encode()


def _clip(text: str) -> str:
    if len(text) <= MAX_ERROR_CHARS:
        return text
    half = MAX_ERROR_CHARS // 2
    return f"{text[:half]}\n... [{len(text) - MAX_ERROR_CHARS} characters cut] ...\n{text[-half:]}"


def error_status_line(message: str) -> bytes:
    """The status line that fails start-up (the process then exits non-zero)."""
    return (_ENCODER.encode({"status": "error", "error": _clip(message) or "start-up failed"}) + "\n").encode()


class ProtocolChannel:
    """The only writer of protocol lines: one thread writes, everyone else hands it lines.

    Lines handed over while a write is under way are coalesced into the next write, so
    a lone response goes out at once and a burst goes out in few system calls.
    """

    _CLOSE: Final = object()

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lines: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._broken = False
        self._writer = threading.Thread(target=self._write_forever, name="runqy-writer", daemon=True)
        self._writer.start()

    @classmethod
    def claim_stdout(cls) -> ProtocolChannel:
        """Keep the real stdout for the protocol and point fd 1 at stderr for everything else."""
        sys.stdout.flush()
        protocol_fd = os.dup(1)
        os.dup2(2, 1)
        # print() now lands on stderr; line buffering keeps it readable next to our logs.
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=True)
        return cls(protocol_fd)

    def send(self, line: bytes) -> None:
        """Queue one complete line for writing; returns at once."""
        self._lines.put(line)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every line sent so far is written; False if that took longer than ``timeout_s``."""
        written = threading.Event()
        self._lines.put(written)
        return written.wait(timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Write what is queued, then stop the writer."""
        self._lines.put(self._CLOSE)
        self._writer.join(timeout_s)

    def _write_forever(self) -> None:
        while True:
            item = self._lines.get()
            batch: list[bytes] = []
            markers: list[threading.Event] = []
            closing = False
            while True:
                if item is self._CLOSE:
                    closing = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    batch.append(item)
                try:
                    item = self._lines.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(b"".join(batch))
            for marker in markers:
                marker.set()
            if closing:
                return

    def _write(self, data: bytes) -> None:
        if self._broken:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # The Go worker closed our stdout: it is gone, and so are the readers of anything we write.
            self._broken = True
            log.error("protocol stream closed by the worker (%s); responses are dropped from now on", exc)
