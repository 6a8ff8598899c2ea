"""The serving loop: read requests, hand them to the runner, answer each exactly once, shut down cleanly.

    stdin ──reader thread──> parse ──> InFlight.admit ──> runner.submit_many
                                                      └─> or run here (runqy.inline)
                                                             │ (any thread)
    stdout <──writer thread── ProtocolChannel <── InFlight.answer (first answer wins)
           <──────── a lone answer, written by the thread that finished it

The main thread only waits: for stdin EOF, a signal, or a fatal runner error. Then it
stops admitting, lets in-flight tasks finish, answers whatever could not finish, and
returns the process exit code.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import signal
import threading
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Final

from runqy.errors import ProtocolError
from runqy.inline import InlineExecution
from runqy.observe.telemetry import TaskObserver
from runqy.protocol import READY_LINE, ProtocolChannel, TaskRequest, TaskResponse, encode_response, parse_request
from runqy.runners.base import Reply, Runner

__all__ = ["DUPLICATE_REPLY", "InFlight", "Server", "StopReason"]

log = logging.getLogger("runqy")

_READ_CHUNK_BYTES: Final = 1 << 16
#: Requests held beyond the runner's capacity before the reader stops reading (it may
#: exceed this by one chunk's lines). The Go worker never sends more than its
#: concurrency, so this only bounds a driver that streams without waiting for answers.
_MAX_QUEUED: Final = 10_000
#: In the error logged when a runner answers a task twice: the fault tests look for it on stderr.
DUPLICATE_REPLY: Final = "was answered twice by the runner"


class StopReason(enum.Enum):
    EOF = "stdin closed"
    SIGNAL = "signal"
    FATAL = "runner failure"
    ONE_SHOT = "one-shot task answered"


class InFlight:
    """Every accepted task until it is answered: the single place that guarantees exactly one answer.

    Each accepted task gets a key, and its reply is ``answer`` bound to that key.
    Answering claims the key by removing it from ``_open`` with ``dict.pop``, which is
    atomic, so the hot path takes no lock: a lock shared by the reader and the handler
    threads made them queue behind each other on every task.

    An answer for a key no longer open is dropped and reported to ``observer``
    (:meth:`~runqy.observe.telemetry.TaskObserver.reply_dropped`), which the stats line,
    ``Worker.stats()`` and the metrics read: a late reply for a task given up on at
    shutdown is expected; any other is a runner that answered a task twice, a bug,
    also logged as an error.
    """

    def __init__(self, channel: ProtocolChannel, limit: int, observer: TaskObserver | None = None) -> None:
        self._channel = channel
        self._limit = limit
        self._resume_at = limit // 2
        self._open: dict[int, TaskRequest] = {}
        self._keys = itertools.count()
        self._closed = False
        # Only for the rare waits: the reader when too many are open, shutdown until idle.
        # Answers notify only while someone waits, and only when it may end that wait.
        self._changed = threading.Condition()
        self._waiters = 0
        self._observer = observer or TaskObserver()
        # Keys answered by give_up(): a reply arriving for one later is late, not a duplicate.
        self._given_up: set[int] = set()

    def admit(self, request: TaskRequest) -> Reply | None:
        """Accept a request and return its reply; None once shutdown began."""
        key = next(self._keys)
        self._open[key] = request
        if self._closed and self._open.pop(key, None) is not None:
            return None  # shutdown began meanwhile: the caller refuses the request
        # A partial of the plain function, not a closure, a bound method or an object
        # with __call__: the fewest objects per task, and answer() is called from C.
        return partial(InFlight.answer, self, key)

    def __len__(self) -> int:
        """Tasks accepted and not answered yet."""
        return len(self._open)

    def wait_for_room(self) -> None:
        """Wait while ``limit`` or more tasks are open, until no more than half as many are.

        The reader calls this before reading more, so a driver that sends too much
        blocks on a full pipe. Waiting for half, not for one, lets the reader take a
        long run of requests per wake-up instead of waking on every answer.
        """
        if len(self._open) < self._limit:
            return
        with self._changed:
            self._waiters += 1
            while len(self._open) > self._resume_at and not self._closed:
                self._changed.wait()
            self._waiters -= 1

    def answer(self, key: int, response: TaskResponse) -> None:
        """Send the response for an accepted task, unless it was already answered (then drop and count it)."""
        line = encode_response(response)
        if self._open.pop(key, None) is None:
            self._drop(key, response)
            return
        if self._open:
            self._channel.send(line)
        else:
            self._channel.send_alone(line)  # the only task in flight: no writer thread to wake
        # Popped before reading _waiters, as a waiter counts itself before it checks:
        # either the waiter sees this answer, or this answer sees the waiter.
        if self._waiters and len(self._open) <= self._resume_at:
            with self._changed:
                self._changed.notify_all()

    def _drop(self, key: int, response: TaskResponse) -> None:
        # Off the hot path: only answers that lost to another answer get here. No lock:
        # give_up() adds its keys before it answers them, so a reply that loses to its
        # answer finds its key there.
        late = key in self._given_up
        self._observer.reply_dropped(response.task_id, late=late)
        if late:
            log.debug("dropping a late response for task %s: it was given up on at shutdown", response.task_id)
        else:
            log.error("task %s %s; the second answer was dropped (a runner bug)", response.task_id, DUPLICATE_REPLY)

    def close(self) -> None:
        """Stop admitting new requests."""
        self._closed = True
        with self._changed:
            self._changed.notify_all()

    def wait_idle(self, timeout_s: float | None) -> bool:
        """Wait until every admitted task is answered; False on timeout."""
        with self._changed:
            self._waiters += 1
            try:
                return self._changed.wait_for(lambda: not self._open, timeout_s)
            finally:
                self._waiters -= 1

    def give_up(self, why: str) -> int:
        """Answer every open task with a retryable error; returns how many there were."""
        unanswered = list(self._open.items())
        self._given_up.update(key for key, _ in unanswered)
        for key, request in unanswered:
            self.answer(key, TaskResponse.failure(request.task_id, why, retry=True))
        return len(unanswered)


class Server:
    """Serves one runner over the protocol until stdin closes, a signal arrives, or the runner fails."""

    def __init__(
        self, runner: Runner, channel: ProtocolChannel, *, shutdown_timeout_s: float, one_shot: bool = False
    ) -> None:
        self.runner = runner
        self.channel = channel
        self.shutdown_timeout_s = shutdown_timeout_s
        self.one_shot = one_shot
        self.inflight = InFlight(channel, runner.capacity + _MAX_QUEUED, runner.telemetry)
        self._stdin_fd = 0
        #: The incomplete last line of what was read so far; every reader thread goes on from it.
        self._pending = b""
        self._inline: InlineExecution | None = None
        # The main thread sleeps on a pipe, not on a threading.Event: the signal handler runs in
        # the main thread, and Event.set() there deadlocks if the signal lands while that same
        # thread holds the Event's lock (between entering Event.wait and parking in it). The
        # handler writes to the pipe directly; other threads under _wake_lock, because the pipe
        # is closed when serve() returns and a late reader must not write to a reused fd.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()
        self._reason: StopReason | None = None
        self._signals_seen = 0
        #: After :meth:`serve`: whether every task finished (False when some were given up on).
        self.drained = False

    def serve(self, stdin_fd: int = 0) -> int:
        """Say ready, then serve until stopped; returns the exit code for the process (0 or 1)."""
        # Signal handlers first: the Go worker may send SIGTERM as soon as it reads the ready line.
        restore = self._install_signal_handlers()
        try:
            self.runner.on_fatal = self._on_fatal
            self._stdin_fd = stdin_fd
            run_task = None if self.one_shot else self.runner.inline_runner()
            if run_task is not None:
                self._inline = InlineExecution(run_task, self._start_reader)
            log.info("ready: %r", self.runner)
            self.channel.send(READY_LINE)
            self._start_reader()
            while self._reason is None:
                os.read(self._wake_r, 64)
            return self._shut_down()
        finally:
            restore()  # first: the handler writes to the pipe without the lock
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = -1
            if self._inline is not None:
                self._inline.close()

    def _stop_with(self, reason: StopReason) -> None:
        """Stop serving, from any thread but the signal handler's (see :meth:`_on_signal`)."""
        with self._wake_lock:
            if self._wake_w >= 0:
                self._set_reason(reason)

    def _set_reason(self, reason: StopReason) -> None:
        if self._reason is None:
            self._reason = reason
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds a wake-up
            os.write(self._wake_w, b"!")

    # --- reading -----------------------------------------------------------------------------

    def _start_reader(self) -> threading.Thread:
        reader = threading.Thread(target=self._read_or_fail, name="runqy-reader", daemon=True)
        reader.start()
        return reader

    def _read_or_fail(self) -> None:
        try:
            self._read(self._stdin_fd)
        except BaseException as exc:
            log.critical("the stdin reader failed", exc_info=exc)
            self._stop_with(StopReason.FATAL)

    def _read(self, fd: int) -> None:
        accept = self._accept
        while True:
            self.inflight.wait_for_room()
            try:
                chunk = os.read(fd, _READ_CHUNK_BYTES)
            except OSError as exc:
                log.error("cannot read stdin: %s", exc)
                chunk = b""
            if not chunk:
                # A last line without its newline is still a request; taken out of _pending
                # first, so that a reader taking over from this thread cannot accept it again.
                last_line, self._pending = self._pending, b""
                last = accept(last_line)
                if last is not None:
                    self._run([last])
                self._stop_with(StopReason.EOF)
                return
            lines = (self._pending + chunk).split(b"\n")
            self._pending = lines.pop()
            if self.one_shot:
                for line in lines:
                    if (task := accept(line)) is not None:
                        self._submit([task])
                        self._stop_with(StopReason.ONE_SHOT)
                        return
            elif not self._run([task for line in lines if (task := accept(line)) is not None]):
                return  # a task held this thread up: another one reads now

    def _accept(self, line: bytes) -> tuple[TaskRequest, Reply] | None:
        """Parse and admit one line: the accepted task, or None when the line was answered or blank."""
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            if not line.strip():
                return None  # blank lines are allowed; checked only here, where they are rare
            log.warning("%s", exc)
            self.channel.send(encode_response(TaskResponse.failure(exc.task_id, str(exc))))
            return None
        reply = self.inflight.admit(request)
        if reply is None:
            why = "worker is shutting down and accepts no new tasks; retry it on another worker"
            self.channel.send(encode_response(TaskResponse.failure(request.task_id, why, retry=True)))
            return None
        return request, reply

    def _run(self, tasks: list[tuple[TaskRequest, Reply]]) -> bool:
        """Run a chunk's tasks here or hand them to the runner; False once this thread must stop reading."""
        if self._inline is not None:
            return self._inline.run(tasks)
        # All the requests of a chunk go to the runner in one hand-off.
        self._submit(tasks)
        return True

    def _submit(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        if not tasks:
            return
        try:
            self.runner.submit_many(tasks)
        except Exception as exc:  # noqa: BLE001 - a runner that cannot take tasks must still answer them
            for request, reply in tasks:
                reply(TaskResponse.failure(request.task_id, f"runner rejected the task: {exc}", retry=True))

    # --- stopping ----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals_seen += 1
        if self._signals_seen > 1:
            # The supervisor insists: whatever is still running is lost anyway.
            os._exit(128 + signum)
        log.info(
            "received %s: finishing in-flight tasks (up to %gs), then exiting",
            signal.Signals(signum).name,
            self.shutdown_timeout_s,
        )
        self._set_reason(StopReason.SIGNAL)  # no lock here: this thread may hold it already

    def _on_fatal(self, exc: BaseException) -> None:
        log.critical("runner failed, exiting so that the worker restarts this process: %s", exc)
        self._stop_with(StopReason.FATAL)

    def _shut_down(self) -> int:
        reason = self._reason
        self.inflight.close()
        if reason is StopReason.FATAL:
            drained = False
        elif reason is StopReason.SIGNAL:
            drained = self.inflight.wait_idle(self.shutdown_timeout_s)
        else:
            # stdin closed (one-shot, or the worker went away): the tasks we hold are bounded by their own timeouts.
            drained = self.inflight.wait_idle(None)
        if not drained:
            why = (
                "worker process is restarting after a runner failure"
                if reason is StopReason.FATAL
                else f"worker shut down before the task finished (shutdown_timeout_s={self.shutdown_timeout_s:g})"
            )
            count = self.inflight.give_up(why)
            log.warning("gave up on %d unfinished task(s): %s", count, why)
        self.channel.flush()
        # The runner stays started: its owner reuses it for the next run, and closes it.
        self.drained = drained
        return 1 if reason is StopReason.FATAL else 0
