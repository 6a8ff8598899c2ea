"""A local stand-in for the Go worker: start a worker process and exchange protocol lines with it.

It does what ``runqy-worker`` does (PROTOCOL.md): starts the process with pipes, waits
for the ready line (skipping other lines, failing on an error status), keeps up to
``concurrency`` requests outstanding, writes whole lines under a lock, matches
responses by task id in any order, and drains stderr line by line. It reads stdout as
strictly as the Go worker does: a line that worker would drop (not JSON, ``NaN``, a
non-string ``task_id`` or ``error``, a non-bool ``retry``, over 10 MiB) is recorded
in :attr:`LocalWorker.garbage_lines` and explained in :attr:`LocalWorker.violations`.
``runqy local``, ``runqy bench``, the tests and the benchmarks all drive workers
through it.

    caller thread ──run()/submit()──> one write per batch of requests ──> worker stdin
    worker stdout ──stdout thread: parse a chunk, match ids──> finished batch ──> run() yields
    worker stderr ──stderr thread: line by line──> stderr_lines, on_stderr_line

The driver must not be what limits a benchmark: requests are encoded and written in
batches, and finished tasks are handed from the stdout thread to :meth:`run` a chunk
at a time, so the cost per task is a JSON encode, a JSON decode and a dict lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from runqy.errors import RunqyError
from runqy.local.lines import (
    DEFAULT_STARTUP_TIMEOUT_S,
    MAX_STDERR_LINE_BYTES,
    judge_stdout_line,
    oversized,
    pump_lines,
)
from runqy.local.stats import Outcome, RunSummary

__all__ = [
    "DEFAULT_STARTUP_TIMEOUT_S",
    "LocalWorker",
    "Outcome",
    "Pending",
    "RunSummary",
    "WorkerStartFailed",
    "make_request",
]

#: After SIGTERM the Go worker waits this long before SIGKILL.
SIGTERM_GRACE_S: Final = 10.0
#: How long to wait for a reader thread once the process has exited: a grandchild may still hold the pipe.
_READER_JOIN_S: Final = 2.0
# Go's encoder writes compact JSON; so do we, once per request.
_ENCODE: Final = json.JSONEncoder(separators=(",", ":")).encode


class WorkerStartFailed(RunqyError):
    """Raised when a worker process exits, reports an error status, or stays silent before its ready line."""


def make_request(
    payload: Any, *, task_id: str | None = None, queue: str = "default", retry_count: int = 0, max_retry: int = 0
) -> dict[str, Any]:
    """A request exactly as the Go worker writes it: six keys, in its order."""
    return {
        "task_id": task_id or os.urandom(16).hex(),
        "type": queue.partition(".")[0],
        "payload": payload,
        "retry_count": retry_count,
        "max_retry": max_retry,
        "queue": queue,
    }


class Pending:
    """A request sent to the worker; ``response`` is set when it is answered (None if it never was)."""

    __slots__ = ("_event", "answered_at", "finished", "request", "response", "sent_at", "sink")

    def __init__(self, request: dict[str, Any], sink: queue.SimpleQueue[list[Pending]] | None = None) -> None:
        self.request = request
        self.response: dict[str, Any] | None = None
        self.sink = sink
        self.sent_at = self.answered_at = 0.0
        self.finished = False
        self._event: threading.Event | None = None

    @property
    def done(self) -> threading.Event:
        """Set once the request is answered or known lost."""
        if self._event is None:
            # Only run()'s own requests have none, and run() exposes them finished: no race with _finish.
            self._event = threading.Event()
            if self.finished:
                self._event.set()
        return self._event

    def outcome(self) -> Outcome:
        return Outcome(self.request, self.response, self.sent_at, self.answered_at)


class LocalWorker:
    """A worker process driven as the Go worker drives it; a context manager that kills it at the end.

    Drive it from one thread at a time (:meth:`run` or :meth:`submit`); reading happens in the background.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
        )
        assert self.process.stdin is not None and self.process.stdout is not None and self.process.stderr is not None
        self._stdin = self.process.stdin
        self._write_lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        # Guards _pending, the finishing of every Pending, and the stderr lines; waiters sleep on it.
        self._lock = threading.Condition()
        self._ready = threading.Event()
        self._stdout_closed = self._stderr_closed = False
        self._start_error: str | None = None
        #: JSON lines without a task id (the ready line, progress lines).
        self.status_lines: list[dict[str, Any]] = []
        #: Stdout lines the Go worker would drop; :attr:`violations` says why for each.
        self.garbage_lines: list[bytes] = []
        #: What the worker did that the Go worker would not accept, in words.
        self.violations: list[str] = []
        #: Responses whose task id was not outstanding (late, duplicated, or to a raw line).
        self.unmatched_responses: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._on_stderr_line = on_stderr_line
        self._stdout_reader = threading.Thread(target=self._read_stdout, args=(self.process.stdout.fileno(),))
        self._stderr_reader = threading.Thread(target=self._read_stderr, args=(self.process.stderr,))
        self._stdout_reader.daemon = self._stderr_reader.daemon = True
        self._stdout_reader.start()
        self._stderr_reader.start()

    @classmethod
    def for_target(cls, target: str, *options: str, **kwargs: Any) -> LocalWorker:
        """Start ``runqy run TARGET OPTIONS...`` with this interpreter."""
        return cls([sys.executable, "-m", "runqy", "run", target, *options], **kwargs)

    @property
    def pid(self) -> int:
        return self.process.pid

    # --- start-up ----------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> None:
        """Wait for ``{"status": "ready"}``; raises :class:`WorkerStartFailed` otherwise."""
        if not self._ready.wait(timeout_s):
            self.kill()
            raise WorkerStartFailed(f"no ready line within {timeout_s:g}s from {' '.join(self.argv)}")
        if self._start_error is not None:
            raise WorkerStartFailed(self._start_error)

    # --- tasks -------------------------------------------------------------------------------

    def send_line(self, line: bytes) -> None:
        """Write raw bytes (one or more whole lines) to the worker's stdin."""
        with self._write_lock:
            self._stdin.write(line)
            self._stdin.flush()

    def submit(self, request: dict[str, Any]) -> Pending:
        """Send one request; its ``done`` event (or :meth:`wait_for`) tells when it is answered."""
        pending = Pending(request)
        pending._event = threading.Event()  # before sending: the answer may come before we return
        self._send([pending])
        return pending

    def submit_many(self, requests: list[dict[str, Any]]) -> list[Pending]:
        """Send several requests in one write, so that the worker finds them together on stdin."""
        batch = [Pending(request) for request in requests]
        for pending in batch:
            pending._event = threading.Event()
        self._send(batch)
        return batch

    def wait_for(self, pending: Pending, timeout_s: float | None = None) -> bool:
        """Wait until ``pending`` is answered or known lost; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: pending.finished, timeout_s)

    def wait_until(self, condition: Callable[[], bool], timeout_s: float | None = None) -> bool:
        """Wait until ``condition()`` holds, checked whenever a line arrives; False on timeout.

        For raw lines sent with :meth:`send_line`, whose answers land in :attr:`unmatched_responses`.
        """
        with self._lock:
            return self._lock.wait_for(lambda: condition() or self._stdout_closed, timeout_s) and condition()

    def call(self, payload: Any, timeout_s: float | None = None, **request_fields: Any) -> dict[str, Any]:
        """Send one task and wait for its response; raises TimeoutError without one."""
        pending = self.submit(make_request(payload, **request_fields))
        if not self.wait_for(pending, timeout_s) or pending.response is None:
            raise TimeoutError(f"no response to task {pending.request['task_id']} within {timeout_s}s")
        return pending.response

    def run(
        self, requests: Iterable[dict[str, Any]], concurrency: int, *, deadline_s: float | None = None
    ) -> Iterator[Outcome]:
        """Send requests keeping at most ``concurrency`` outstanding; yields outcomes as they complete.

        A request unanswered when the worker's stdout closes, or after ``deadline_s``
        (the Go worker's per-task timeout), is yielded as lost; a late reply to it is
        then dropped, as the Go worker drops it.
        """
        sink: queue.SimpleQueue[list[Pending]] = queue.SimpleQueue()
        source = iter(requests)
        outstanding = 0
        exhausted = False
        while True:
            batch: list[Pending] = []
            while not exhausted and outstanding + len(batch) < concurrency:
                request = next(source, None)
                if request is None:
                    exhausted = True
                else:
                    batch.append(Pending(request, sink))
            if batch:
                outstanding += len(batch)
                self._send(batch)
            if outstanding == 0:
                return
            try:
                finished = sink.get(timeout=self._next_expiry(sink, deadline_s))
            except queue.Empty:
                self._expire(sink, deadline_s or 0.0)
                continue
            outstanding -= len(finished)
            for pending in finished:
                yield pending.outcome()

    def _send(self, batch: list[Pending]) -> None:
        lines = b"".join([(_ENCODE(pending.request) + "\n").encode() for pending in batch])
        now = time.perf_counter()
        for pending in batch:
            pending.sent_at = now
        with self._lock:
            closed = self._stdout_closed
            if not closed:
                for pending in batch:
                    task_id = pending.request["task_id"]
                    if task_id in self._pending:
                        # Two outstanding tasks with one id could never both be matched: the run would hang.
                        raise RunqyError(f"task id {task_id!r} is already in flight; give every request its own id")
                    self._pending[task_id] = pending
        if closed:
            self._finish([(pending, None) for pending in batch])
            return
        try:
            self.send_line(lines)
        except OSError:
            # The worker is gone: these are lost like everything else it held.
            self._finish_lost(batch)

    def _next_expiry(self, sink: object, deadline_s: float | None) -> float | None:
        if deadline_s is None:
            return None
        with self._lock:
            oldest = next((p.sent_at for p in self._pending.values() if p.sink is sink), None)
        return None if oldest is None else max(0.0, oldest + deadline_s - time.perf_counter())

    def _expire(self, sink: object, deadline_s: float) -> None:
        now = time.perf_counter()
        with self._lock:
            late = [p for p in self._pending.values() if p.sink is sink and now - p.sent_at >= deadline_s]
        self._finish_lost(late)

    def _finish_lost(self, batch: list[Pending]) -> None:
        with self._lock:
            lost = [p for p in batch if self._pending.pop(p.request["task_id"], None) is p]
        self._finish([(pending, None) for pending in lost])

    def _finish(self, answers: list[tuple[Pending, dict[str, Any] | None]]) -> None:
        """Record answers (None: lost), wake waiters, and hand each run its finished tasks in one batch."""
        now = time.perf_counter()
        by_sink: dict[int, tuple[queue.SimpleQueue[list[Pending]], list[Pending]]] = {}
        with self._lock:
            for pending, response in answers:
                pending.response, pending.answered_at, pending.finished = response, now, True
                if pending._event is not None:
                    pending._event.set()
                if pending.sink is not None:
                    by_sink.setdefault(id(pending.sink), (pending.sink, []))[1].append(pending)
            self._lock.notify_all()
        for sink, finished in by_sink.values():
            sink.put(finished)

    # --- shutdown ----------------------------------------------------------------------------

    def close_stdin(self) -> None:
        with self._write_lock:
            if not self._stdin.closed:
                # The worker may be gone and have taken the pipe with it: closed either way.
                with contextlib.suppress(OSError):
                    self._stdin.close()

    def terminate(self) -> None:
        """Send SIGTERM with stdin still open, as the Go worker does at shutdown."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float | None = SIGTERM_GRACE_S) -> int:
        """Wait for the process to exit (SIGKILL after ``timeout_s``, as the Go worker does); returns its code.

        Every request still unanswered after the exit is then finished as lost.
        """
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait()
        # A grandchild that inherited the pipes may keep them open: do not wait for it forever.
        self._stdout_reader.join(_READER_JOIN_S)
        self._stderr_reader.join(_READER_JOIN_S)
        self._close_stdout()
        return code

    def shutdown(self, how: str = "close-stdin", timeout_s: float = SIGTERM_GRACE_S) -> int:
        """Stop the worker as the Go worker does: ``close-stdin`` (EOF) or ``term`` (SIGTERM); returns the exit code."""
        if how == "term":
            self.terminate()
        elif how == "close-stdin":
            self.close_stdin()
        else:
            raise ValueError(f"shutdown {how!r}: expected 'term' or 'close-stdin'")
        return self.wait(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def __enter__(self) -> LocalWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.process.wait()
        self.close_stdin()
        for reader, stream in ((self._stdout_reader, self.process.stdout), (self._stderr_reader, self.process.stderr)):
            reader.join(_READER_JOIN_S)
            # Closing a pipe that a reader still reads could hand its fd number to a new file.
            if not reader.is_alive() and stream is not None:
                stream.close()
        self._close_stdout()

    # --- readers -----------------------------------------------------------------------------

    def _read_stdout(self, fd: int) -> None:
        try:
            pump_lines(fd, self._on_stdout_lines, self._oversized)
        finally:
            # Whatever stopped the reading, nobody may wait for this worker's stdout any more.
            if not self._ready.is_set():
                self._start_error = f"worker exited with code {self.process.wait()} before its ready line"
                self._ready.set()
            self._close_stdout()

    def _oversized(self, size: int) -> None:
        self._garbage(b"", oversized(size))

    def _close_stdout(self) -> None:
        with self._lock:
            self._stdout_closed = True
            leftovers = list(self._pending.values())
            self._pending.clear()
        if leftovers:
            self._finish([(pending, None) for pending in leftovers])

    def _on_stdout_lines(self, lines: list[bytes]) -> None:
        responses: list[dict[str, Any]] = []
        for raw in lines:
            message = self._parse(raw)
            if message is None:
                continue
            if "task_id" in message:
                responses.append(message)
            else:
                self._on_status(message)
        if not responses:
            return
        answers: list[tuple[Pending, dict[str, Any] | None]] = []
        with self._lock:  # once per chunk, not per line
            for message in responses:
                pending = self._pending.pop(message["task_id"], None)
                if pending is None:
                    self.unmatched_responses.append(message)
                    self._lock.notify_all()
                else:
                    answers.append((pending, message))
        if answers:
            self._finish(answers)

    def _parse(self, raw: bytes) -> dict[str, Any] | None:
        """A stdout line as the Go worker reads it, or None (recorded) when it would drop the line."""
        if not raw.strip():
            return None
        message, why = judge_stdout_line(raw)
        if message is None:
            self._garbage(raw, why)
        return message

    def _garbage(self, raw: bytes, why: str) -> None:
        self.garbage_lines.append(raw)
        self.violations.append(why)

    def _on_status(self, message: dict[str, Any]) -> None:
        self.status_lines.append(message)
        if not self._ready.is_set() and message.get("status") in ("ready", "error"):
            if message["status"] == "error":
                self._start_error = f"worker failed to start: {message.get('error')}"
            self._ready.set()

    def _read_stderr(self, stream: Any) -> None:
        for raw in stream:
            if len(raw) > MAX_STDERR_LINE_BYTES:
                self.violations.append(
                    f"a stderr line of {len(raw)} bytes: the Go worker stops draining stderr and the worker blocks"
                )
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.stderr_lines.append(line)
                self._lock.notify_all()
            if self._on_stderr_line is not None:
                self._on_stderr_line(line)
        with self._lock:
            self._stderr_closed = True
            self._lock.notify_all()

    def wait_for_stderr(self, text: str, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> str:
        """Wait for a stderr line containing ``text`` (a handler saying it started, say); returns it."""

        def found() -> str | None:
            return next((line for line in self.stderr_lines if text in line), None)

        with self._lock:
            if not self._lock.wait_for(lambda: found() is not None or self._stderr_closed, timeout_s):
                raise TimeoutError(f"no stderr line with {text!r} within {timeout_s:g}s")
            line = found()
        if line is None:
            raise TimeoutError(f"the worker closed stderr without a line containing {text!r}")
        return line
