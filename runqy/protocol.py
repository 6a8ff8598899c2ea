"""The wire contract with the Go worker: typed messages, their codec, and the channel that owns stdout.

One JSON object per line. Requests come on stdin; the ready status and responses go
to the real stdout, which :meth:`ProtocolChannel.claim_stdout` takes away from the
rest of the process so that nothing else (``print()``, C libraries, subprocesses)
can write into the protocol stream.
"""

from __future__ import annotations

import contextlib
import json
import json.encoder
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, Final, NamedTuple

from runqy.errors import ProtocolError
from runqy.fdio import write_all
from runqy.shared_stdout import SharedStdout, share

__all__ = [
    "MAX_LINE_BYTES",
    "ProtocolChannel",
    "TaskRequest",
    "TaskResponse",
    "WRITTEN_ELSEWHERE",
    "encode_response",
    "error_status_line",
    "parse_request",
    "parse_request_stdlib",
    "prepare_parser",
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


def _not_json(value: object) -> None:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_encoder() -> Callable[[Any, int], Iterable[str]]:
    """A strict JSON encoder (no NaN, ASCII only, compact), built once and reused for every line.

    It returns the encoding in chunks, to be joined: ``json.dumps`` builds a new
    encoder per call, which costs more than encoding a small result; the C encoder
    underneath is reusable and stateless when circular references are left to the
    recursion limit, and called directly it spares a Python call per line (hot path).
    Falls back to the pure-Python encoder where the C one is missing.
    """
    c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
    try:
        c_encoder = c_make_encoder(None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", *[False] * 3)
        if "".join(c_encoder({"a": [1, None, True, "\u00e9"]}, 0)) == '{"a":[1,null,true,"\\u00e9"]}':
            return c_encoder  # type: ignore[no-any-return]
    except TypeError:  # missing (None) or with another signature: use the documented encoder
        pass
    encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_not_json)
    return lambda value, _indent_level: encoder.iterencode(value)


#: ``"".join(_encode_chunks(value, 0))`` is ``value`` as strict JSON.
_encode_chunks: Final = _make_encoder()


def _encode(value: Any) -> str:
    return "".join(_encode_chunks(value, 0))


_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii

READY_LINE: Final = b'{"status":"ready"}\n'


# Named tuples: immutable, picklable for child processes, and cheap to build on the hot path.
class TaskRequest(NamedTuple):
    """One task as the Go worker sends it."""

    task_id: str
    payload: Any = None
    type: str = ""
    queue: str = ""
    retry_count: int = 0
    max_retry: int = 0


class TaskResponse(NamedTuple):
    """The answer to one task: success when ``error`` is None."""

    task_id: str
    result: Any = None
    error: str | None = None
    retry: bool = False

    @classmethod
    def failure(cls, task_id: str, error: str, *, retry: bool = False) -> TaskResponse:
        """An error response; an empty message would read as success, so it never is empty."""
        return cls(task_id, None, error or "task failed without a message", retry)


class _WrittenElsewhere:
    def __repr__(self) -> str:
        return "WRITTEN_ELSEWHERE"


#: The ``result`` of a response whose line another process already wrote to the protocol
#: stream (see :mod:`runqy.shared_stdout`): the serving loop counts the task as answered and
#: writes nothing. Only tasks read from the serving loop's own stdin are answered so.
WRITTEN_ELSEWHERE: Final[Any] = _WrittenElsewhere()


# The optional request fields: (name, Python type, what to say when it is wrong).
_OPTIONAL_FIELDS: Final = (
    ("type", str, "a string"),
    ("queue", str, "a string"),
    ("retry_count", int, "an integer"),
    ("max_retry", int, "an integer"),
)


# Build the named tuples above from one tuple entirely in C: ``_make`` and ``__new__`` are
# Python functions, and a Python call is a noticeable part of a no-op task (hot path).
_new_request: Final[Callable[[Iterable[Any]], TaskRequest]] = partial(tuple.__new__, TaskRequest)
new_response: Final[Callable[[tuple[Any, ...]], TaskResponse]] = partial(tuple.__new__, TaskResponse)


_validate_json: Callable[[bytes], dict[str, Any]] | None = None


def prepare_parser() -> None:
    """Build the request validator now, so that the first request does not wait for it.

    Importing pydantic-core takes about a third as long as a worker takes to start; a
    worker does it beside its start (see ``Worker``), on a thread of its own, rather
    than before its ready line or on its first request. A one-shot worker, which parses
    one request, does not: it uses :func:`parse_request_stdlib`.
    """
    if _validate_json is None:
        _request_validator()


def _request_validator() -> Callable[[bytes], dict[str, Any]]:
    """A pydantic-core validator that parses a request and checks its field types in one pass.

    Built on first use (or by :func:`prepare_parser`): child processes of the process
    runner never parse requests, and every replacement child would pay for the import.
    Its dict holds the fields in :class:`TaskRequest` order with the defaults filled in.
    It is strict, so it accepts exactly what :func:`parse_request_stdlib` accepts; only a
    line it rejects pays for the second parse that says what is wrong.
    """
    global _validate_json
    from pydantic_core import SchemaValidator, core_schema

    kinds = {str: core_schema.str_schema(strict=True), int: core_schema.int_schema(strict=True)}

    def optional(schema: core_schema.CoreSchema, default: Any) -> core_schema.TypedDictField:
        return core_schema.typed_dict_field(core_schema.with_default_schema(schema, default=default), required=False)

    fields = {
        "task_id": core_schema.typed_dict_field(kinds[str]),
        "payload": optional(core_schema.any_schema(), None),
        **{name: optional(kinds[kind], TaskRequest._field_defaults[name]) for name, kind, _ in _OPTIONAL_FIELDS},
    }
    validator = SchemaValidator(core_schema.typed_dict_schema(fields, extra_behavior="ignore"))
    _validate_json = validator.validate_json
    return _validate_json


def parse_request(line: bytes) -> TaskRequest:
    """Parse one request line; raises :class:`ProtocolError` saying what was wrong.

    The error carries ``task_id`` when one could be read from the line, so that the
    Go worker's pending task is failed at once instead of waiting for its deadline.
    Unknown keys are ignored, missing optional ones take their defaults. Parsed by
    pydantic-core, about half a microsecond faster a line than the standard library.
    """
    try:
        fields = (_validate_json or _request_validator())(line)
    except ValueError:  # pydantic-core's ValidationError
        return parse_request_stdlib(line)
    return _new_request(fields.values())


def parse_request_stdlib(line: bytes) -> TaskRequest:
    """:func:`parse_request` with the standard library's ``json``, checking each field in turn.

    It says what is wrong with a line the validator rejected, and it parses a one-shot
    worker's only request, which would otherwise wait for pydantic-core's import.
    """
    try:
        data = json.loads(line.decode())  # decoded here: json.loads would take UTF-16 and UTF-32 too
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than about a thousand levels
        raise _bad(line, f"invalid request: not valid JSON ({exc}); {_EXPECTED}") from None
    if type(data) is not dict:
        raise _bad(line, f"invalid request: got a JSON {_json_kind(data)}; {_EXPECTED}")
    task_id = data.get("task_id")
    if type(task_id) is not str:
        what = "missing task_id" if task_id is None else f"task_id must be a string, got a JSON {_json_kind(task_id)}"
        raise _bad(line, f"invalid request: {what}; {_EXPECTED}")
    values = tuple(data.get(name, TaskRequest._field_defaults[name]) for name, _, _ in _OPTIONAL_FIELDS)
    for (name, expected_type, expected), value in zip(_OPTIONAL_FIELDS, values, strict=True):
        if type(value) is not expected_type:
            raise ProtocolError(f"invalid request: {name} must be {expected}, got a JSON {_json_kind(value)}", task_id)
    # After the validator, only reached where the two disagree on a valid request (a payload nested
    # deeper than pydantic-core's limit of about 250 levels): it gets the fields the validator gives.
    return _new_request((task_id, data.get("payload"), *values))


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
    task_id, result, error, retry = response
    try:
        result_json = "".join(_encode_chunks(result, 0))
    except (TypeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply or circular" if isinstance(exc, RecursionError) else str(exc)
        why = f"result is not JSON: {reason}; return dicts, lists, strings, finite numbers, booleans or None"
        if error:
            why += f" (the handler's own error was: {error})"
        return _line(task_id, "null", why, False)
    if error is None and retry is False and type(task_id) is str:
        # A success, by far the most common line: assembled here, without _line's calls.
        line = f'{{"task_id":{_quote(task_id)},"result":{result_json},"error":null,"retry":false}}\n'.encode()
    else:
        line = _line(task_id, result_json, error, retry)
    if len(line) < MAX_LINE_BYTES:
        return line
    return _line(
        task_id,
        "null",
        f"result is {len(line) / 2**20:.1f} MiB as JSON; a response line must stay under "
        f"{MAX_LINE_BYTES // 2**20} MiB (the Go worker's limit): store large outputs elsewhere and return a reference",
        False,
    )


def _line(task_id: str, result_json: str, error: str | None, retry: bool) -> bytes:
    # Assembled by hand around the encoded result: a dict per response cost more than the rest.
    error_json = "null" if error is None else _encode_string(_clip(error))
    retry_json = "true" if retry is True else "false"
    task_id_json = _encode_string(task_id)
    return f'{{"task_id":{task_id_json},"result":{result_json},"error":{error_json},"retry":{retry_json}}}\n'.encode()


def _encode_string(text: str) -> str:
    return _quote(text if type(text) is str else str(text))


def _clip(text: str) -> str:
    if type(text) is not str:
        text = str(text)
    if len(text) <= MAX_ERROR_CHARS:
        return text
    half = MAX_ERROR_CHARS // 2
    return f"{text[:half]}\n... [{len(text) - MAX_ERROR_CHARS} characters cut] ...\n{text[-half:]}"


def error_status_line(message: str) -> bytes:
    """The status line that fails start-up (the process then exits non-zero)."""
    return (_encode({"status": "error", "error": _clip(message) or "start-up failed"}) + "\n").encode()


class ProtocolChannel:
    """The only writer of protocol lines: one thread writes, everyone else hands it lines.

    Lines handed over while a write is under way are coalesced into the next write, so
    a lone response goes out at once and a burst goes out in few system calls.
    """

    _CLOSE: Final = object()

    def __init__(self, fd: int, shared: SharedStdout | None = None) -> None:
        self._fd = fd
        #: Set when child processes may write answers to this stream too (see :mod:`runqy.shared_stdout`).
        self.shared = shared
        self._lines: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Queues one complete line for writing and returns at once. The queue's own
        #: ``put``, so that sending a response makes no Python call (hot path).
        self.send: Callable[[bytes], None] = self._lines.put
        # Held while a write is under way, by the writer thread or by send_alone().
        self._writing = threading.Lock()
        #: The thread inside :meth:`together`, and the lines it sent alone there.
        self._holder: int | None = None
        self._held: list[bytes] = []
        #: Held for a :meth:`together` block: :meth:`flush` waits for its lines too.
        self._together = threading.Lock()
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
        return cls(protocol_fd, share(protocol_fd))

    def send_alone(self, line: bytes) -> None:
        """Send a line that is the only one going out: written at once from the calling thread.

        With one task in flight, waking the writer thread for each answer costs more
        than the write itself. When a write is under way or lines wait in the queue,
        the line is queued like :attr:`send` instead, so a burst still goes out in few
        writes. A line may so pass lines of other tasks still held by the writer
        thread, never a status line: requests come only after the ready line is read.
        Inside :meth:`together`, it waits for the block's end.
        """
        holder = self._holder
        if holder is not None and holder == threading.get_ident():
            self._held.append(line)
            return
        if self._writing.acquire(blocking=False):
            try:
                if self._lines.empty():
                    self._write(line)
                    return
            finally:
                self._writing.release()
        self._lines.put(line)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """The lines this thread sends alone inside the block go out in one write at its end.

        For a thread that answers several tasks at once: one system call, and one
        wake-up of the worker reading them, instead of one per answer. One thread at a time.
        """
        with self._together:
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None
                held, self._held = self._held, []
                if held:
                    self.send_alone(b"".join(held))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every line sent so far is written; False if that took longer than ``timeout_s``.

        Lines held by a :meth:`together` block under way count as sent: a task answered
        there is no longer open, and the process may be about to exit.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._together.acquire(timeout=-1 if timeout_s is None else timeout_s):
            return False
        self._together.release()
        written = threading.Event()
        self._lines.put(written)
        return written.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

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
                with self._writing:
                    self._write(b"".join(batch))
            for marker in markers:
                marker.set()
            if closing:
                return

    def _write(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            if self.shared is not None:
                self.shared.write_all(data)
            else:
                write_all(self._fd, data)
        except OSError as exc:
            # The Go worker closed our stdout: it is gone, and so are the readers of anything we write.
            self._broken = True
            log.error("protocol stream closed by the worker (%s); responses are dropped from now on", exc)
