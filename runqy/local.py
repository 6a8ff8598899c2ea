"""A local stand-in for the Go worker: start a worker process and exchange protocol lines with it.

It does what ``runqy-worker`` does (PROTOCOL.md): starts the process with pipes, waits
for the ready line (skipping other lines, failing on an error status), keeps up to
``concurrency`` requests outstanding, writes whole lines under a lock, matches
responses by task id in any order, and drains stderr line by line. ``runqy local``,
the tests and the benchmarks all drive workers through it.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from runqy.errors import RunqyError

__all__ = ["LocalWorker", "Outcome", "RunSummary", "WorkerStartFailed", "make_request"]

log = logging.getLogger("runqy.local")

#: The Go worker waits this long for the ready line by default.
DEFAULT_STARTUP_TIMEOUT_S: Final = 60.0
#: After SIGTERM the Go worker waits this long before SIGKILL.
SIGTERM_GRACE_S: Final = 10.0


class WorkerStartFailed(RunqyError):
    """Raised when a worker process exits, reports an error status, or stays silent before its ready line."""


def make_request(
    payload: Any, *, task_id: str | None = None, queue: str = "default", retry_count: int = 0, max_retry: int = 0
) -> dict[str, Any]:
    """A request exactly as the Go worker writes it: six keys, in its order."""
    return {
        "task_id": task_id or str(uuid.uuid4()),
        "type": queue.partition(".")[0],
        "payload": payload,
        "retry_count": retry_count,
        "max_retry": max_retry,
        "queue": queue,
    }


@dataclass(frozen=True)
class Outcome:
    """One request and what became of it."""

    request: dict[str, Any]
    response: dict[str, Any] | None
    latency_s: float

    @property
    def status(self) -> str:
        """``ok``, ``failed``, ``retryable`` or ``lost`` (no answer before the worker stopped)."""
        if self.response is None:
            return "lost"
        if not self.response.get("error"):
            return "ok"
        return "retryable" if self.response.get("retry") else "failed"


@dataclass
class RunSummary:
    """Counts, throughput and latency of a run, as ``runqy local`` prints them."""

    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0
    exit_code: int | None = None

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    def latency_percentile_s(self, percent: float) -> float:
        latencies = sorted(o.latency_s for o in self.outcomes if o.response is not None)
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(len(latencies) * percent / 100))]

    @property
    def tasks_per_s(self) -> float:
        return len(self.outcomes) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        return (
            f"{len(self.outcomes)} tasks in {self.elapsed_s:.2f}s ({self.tasks_per_s:.1f}/s): "
            f"ok={self.count('ok')} failed={self.count('failed')} retryable={self.count('retryable')} "
            f"lost={self.count('lost')}; latency p50={self.latency_percentile_s(50) * 1000:.1f}ms "
            f"p99={self.latency_percentile_s(99) * 1000:.1f}ms; worker exit code {self.exit_code}"
        )


class _Pending:
    """A request sent and not yet answered."""

    __slots__ = ("answered_at", "done", "on_done", "request", "response", "sent_at")

    def __init__(self, request: dict[str, Any], on_done: Callable[[_Pending], None] | None = None) -> None:
        self.request = request
        self.response: dict[str, Any] | None = None
        self.on_done = on_done
        self.sent_at = self.answered_at = time.perf_counter()
        self.done = threading.Event()

    def finish(self, response: dict[str, Any] | None) -> None:
        self.response = response
        self.answered_at = time.perf_counter()
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)

    def outcome(self) -> Outcome:
        return Outcome(self.request, self.response, self.answered_at - self.sent_at)


class LocalWorker:
    """A worker process driven as the Go worker drives it; a context manager that stops it."""

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
        self._pending: dict[str, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._ready = threading.Event()
        self._stdout_closed = False
        self._start_error: str | None = None
        self.status_lines: list[dict[str, Any]] = []
        #: Lines on stdout that were not JSON objects: each one would be dropped by the Go worker.
        self.garbage_lines: list[bytes] = []
        self.unmatched_responses: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._stderr_changed = threading.Condition()
        self._stderr_closed = False
        self._on_stderr_line = on_stderr_line
        self._stdout_reader = threading.Thread(target=self._read_stdout, args=(self.process.stdout,), daemon=True)
        self._stderr_reader = threading.Thread(target=self._read_stderr, args=(self.process.stderr,), daemon=True)
        self._stdout_reader.start()
        self._stderr_reader.start()

    @classmethod
    def for_target(cls, target: str, *options: str, **kwargs: Any) -> LocalWorker:
        """Start ``runqy run TARGET OPTIONS...`` with this interpreter."""
        return cls([sys.executable, "-m", "runqy", "run", target, *options], **kwargs)

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

    def submit(self, request: dict[str, Any]) -> _Pending:
        """Send one request; the returned handle's ``done`` event is set when it is answered."""
        pending = _Pending(request)
        self._send(pending)
        return pending

    def _send(self, pending: _Pending) -> None:
        pending.sent_at = time.perf_counter()
        with self._pending_lock:
            if self._stdout_closed:
                pending.finish(None)
                return
            self._pending[pending.request["task_id"]] = pending
        self.send_line(json.dumps(pending.request).encode() + b"\n")

    def call(self, payload: Any, timeout_s: float | None = None, **request_fields: Any) -> dict[str, Any]:
        """Send one task and wait for its response."""
        pending = self.submit(make_request(payload, **request_fields))
        if not pending.done.wait(timeout_s) or pending.response is None:
            raise TimeoutError(f"no response to task {pending.request['task_id']} within {timeout_s}s")
        return pending.response

    def run(self, requests: Iterable[dict[str, Any]], concurrency: int) -> Iterator[Outcome]:
        """Send requests keeping at most ``concurrency`` outstanding; yields outcomes as they complete.

        A request still unanswered when the worker's stdout closes is yielded as ``lost``.
        """
        finished: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        outstanding = 0
        for request in requests:
            while outstanding >= concurrency:
                yield finished.get().outcome()
                outstanding -= 1
            pending = _Pending(request, finished.put)
            try:
                self._send(pending)
            except OSError:  # the worker is gone: this one is lost like the rest
                pending.finish(None)
            outstanding += 1
        for _ in range(outstanding):
            yield finished.get().outcome()

    # --- shutdown ----------------------------------------------------------------------------

    def close_stdin(self) -> None:
        with self._write_lock:
            if not self._stdin.closed:
                self._stdin.close()

    def terminate(self) -> None:
        """Send SIGTERM with stdin still open, as the Go worker does at shutdown."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float | None = SIGTERM_GRACE_S) -> int:
        """Wait for the process to exit (SIGKILL after ``timeout_s``, as the Go worker does); returns its code."""
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait()
        self._stdout_reader.join()
        self._stderr_reader.join()
        return code

    def shutdown(self, how: str = "close-stdin", timeout_s: float = SIGTERM_GRACE_S) -> int:
        """Stop the worker as the Go worker does: ``close-stdin`` (EOF) or ``term`` (SIGTERM); returns the exit code."""
        if how == "term":
            self.terminate()
        else:
            self.close_stdin()
        return self.wait(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def __enter__(self) -> LocalWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    # --- readers -----------------------------------------------------------------------------

    def _read_stdout(self, stream: Any) -> None:
        for raw in stream:
            self._on_stdout_line(raw)
        if not self._ready.is_set():
            code = self.process.wait()
            self._start_error = f"worker exited with code {code} before its ready line"
            self._ready.set()
        with self._pending_lock:
            self._stdout_closed = True
            leftovers = list(self._pending.values())
            self._pending.clear()
        for pending in leftovers:
            pending.finish(None)

    def _on_stdout_line(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            if raw.strip():
                self.garbage_lines.append(raw)
            return
        if "task_id" not in message:
            self.status_lines.append(message)
            if not self._ready.is_set() and message.get("status") in ("ready", "error"):
                if message["status"] == "error":
                    self._start_error = f"worker failed to start: {message.get('error')}"
                self._ready.set()
            return
        with self._pending_lock:
            pending = self._pending.pop(message["task_id"], None) if isinstance(message["task_id"], str) else None
        if pending is None:
            self.unmatched_responses.append(message)
            return
        pending.finish(message)

    def _read_stderr(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._stderr_changed:
                self.stderr_lines.append(line)
                self._stderr_changed.notify_all()
            if self._on_stderr_line is not None:
                self._on_stderr_line(line)
        with self._stderr_changed:
            self._stderr_closed = True
            self._stderr_changed.notify_all()

    def wait_for_stderr(self, text: str, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> str:
        """Wait for a stderr line containing ``text`` (a handler saying it started, say); returns it."""

        def found() -> str | None:
            return next((line for line in self.stderr_lines if text in line), None)

        with self._stderr_changed:
            if not self._stderr_changed.wait_for(lambda: found() is not None or self._stderr_closed, timeout_s):
                raise TimeoutError(f"no stderr line with {text!r} within {timeout_s:g}s")
            line = found()
        if line is None:
            raise TimeoutError(f"the worker closed stderr without a line containing {text!r}")
        return line


def forward_stderr(sink: TextIO = sys.stderr) -> Callable[[str], None]:
    """A stderr callback that prefixes the worker's lines, as the Go worker's log does."""

    def forward(line: str) -> None:
        print(f"[worker] {line}", file=sink, flush=True)

    return forward
