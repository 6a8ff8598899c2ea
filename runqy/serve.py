"""The serving loop: read requests, hand them to the runner, answer each exactly once, shut down cleanly.

    stdin ──reader thread──> parse ──> InFlight.admit ──> runner.submit_many
      └──or the runner's own threads, between their tasks ──> run there (Runner.stdin_host)
                                                             │ (any thread)
    stdout <──writer thread── ProtocolChannel <── InFlight.answer (first answer wins)
           <──────── a lone answer, or any of a stdin host's, written by the thread that made it

The main thread only waits: for stdin EOF, a signal, or a fatal runner error. Then it
stops admitting, lets in-flight tasks finish, answers whatever could not finish, and
returns the process exit code.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import io
import itertools
import logging
import os
import select
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from types import FrameType
from typing import Final

from runqy.errors import ProtocolError
from runqy.inline import HostedStdin, ReadOn, Task
from runqy.observe.telemetry import TaskObserver
from runqy.protocol import (
    READY_LINE,
    WRITTEN_ELSEWHERE,
    ProtocolChannel,
    TaskRequest,
    TaskResponse,
    encode_response,
    parse_request,
    parse_request_stdlib,
)
from runqy.runners.base import Reply, Runner
from runqy.spin import SpinWait, in_seconds

__all__ = ["DUPLICATE_REPLY", "InFlight", "Server", "StopReason"]

log = logging.getLogger("runqy")

_READ_CHUNK_BYTES: Final = 1 << 16
#: Requests held beyond the runner's capacity before the reader stops reading (it may
#: exceed this by one chunk's lines). The Go worker never sends more than its
#: concurrency, so this only bounds a driver that streams without waiting for answers.
_MAX_QUEUED: Final = 10_000
#: More tasks open than this is a burst (a driver that streams, not the Go worker's few in
#: flight): their answers go to the writer thread, which writes what piled up in one system
#: call, also where each answer is otherwise written in place. A write per answer cost a
#: stream a third of its throughput.
_BURST_OPEN: Final = 32
#: After a signal, once the last task is answered: how long the readers may go on refusing
#: requests that stdin already holds, so that none sent before the signal is left unread.
_LAST_READS_S: Final = 0.1
#: After giving up on the open tasks: how long answers already claimed may take to be sent.
_LAST_ANSWERS_S: Final = 1.0
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
        #: Write every answer from the thread that made it: set when one thread runs every
        #: task (see :mod:`runqy.inline`), so answers never wait for, nor wake, the writer thread.
        self.answer_in_place = False
        self._observer = observer or TaskObserver()
        # Keys answered by give_up(): a reply arriving for one later is late, not a duplicate.
        self._given_up: set[int] = set()
        #: Keys from just before their claim until their line is sent (written, or queued
        #: for the writer): a task popped from _open is not yet answered on stdout. A list,
        #: whose append and remove are atomic, counts a key answered twice at once twice.
        self._answering: list[int] = []

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

    def has_room(self) -> bool:
        """Whether a read may go on now: :meth:`wait_for_room` would return at once."""
        return len(self._open) < self._limit

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
        """Send the response for an accepted task, unless it was already answered (then drop and count it).

        A response whose result is :data:`~runqy.protocol.WRITTEN_ELSEWHERE` was written by a
        child process: it only ends the task.
        """
        if response.result is WRITTEN_ELSEWHERE:
            self._written_elsewhere(key, response)
            return
        line = encode_response(response)
        # Added before the claim, so that wait_idle() never sees the task in neither place.
        self._answering.append(key)
        try:
            if self._open.pop(key, None) is None:
                self._drop(key, response)
                return
            still_open = len(self._open)
            if still_open > _BURST_OPEN or (still_open and not self.answer_in_place):
                self._channel.send(line)  # the writer thread coalesces a burst's answers while this one runs on
            else:
                self._channel.send_alone(line)  # the only task in flight, or few and in place: written here
        finally:
            self._answering.remove(key)
        # Sent before reading _waiters, as a waiter counts itself before it checks:
        # either the waiter sees this answer, or this answer sees the waiter.
        if self._waiters:
            self._wake_waiters()

    def _written_elsewhere(self, key: int, response: TaskResponse) -> None:
        if self._open.pop(key, None) is None:
            self._drop(key, response)
        elif self._waiters:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Wake the threads waiting for answers, once these may end a wait (rare: see ``_changed``)."""
        if len(self._open) <= self._resume_at:
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

    @property
    def closed(self) -> bool:
        """Whether admission is closed (shutdown began)."""
        return self._closed

    def close(self) -> None:
        """Stop admitting new requests."""
        self._closed = True
        with self._changed:
            self._changed.notify_all()

    def wait_idle(self, timeout_s: float | None) -> bool:
        """Wait until every admitted task is answered and its line sent; False on timeout.

        Sent: written, or queued for the writer thread, so that a :meth:`ProtocolChannel.flush`
        after it writes every answer.
        """
        with self._changed:
            self._waiters += 1
            try:
                return self._changed.wait_for(lambda: not self._open and not self._answering, timeout_s)
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
        self,
        runner: Runner,
        channel: ProtocolChannel,
        *,
        shutdown_timeout_s: float,
        one_shot: bool = False,
        spin_wait_s: float = 0.0,
    ) -> None:
        self.runner = runner
        self.channel = channel
        self.shutdown_timeout_s = shutdown_timeout_s
        self.one_shot = one_shot
        #: One request is not worth pydantic-core's import (see runqy.protocol.prepare_parser).
        self._parse = parse_request_stdlib if one_shot else parse_request
        self.inflight = InFlight(channel, runner.capacity + _MAX_QUEUED, runner.telemetry)
        self._stdin_fd = 0
        #: stdin, read through ``FileIO`` (see _read_stdin); set by serve().
        self._stdin: io.RawIOBase
        #: Whether a host's reads run what they read in turn (see _unaccepted), and whether stdin is
        #: non-blocking, so that reading on never waits (see _read_on); both set by serve().
        self._in_turn = False
        self._stdin_nonblocking = False
        #: The incomplete last line of what was read so far; whichever thread reads next goes on from it.
        self._pending = b""
        self._eof = False
        #: Notified after each read once shutdown began (see _refuse_what_stdin_holds).
        self._read_done = threading.Condition()
        #: Held by a hosted read from start to end; once ``_hosting_over`` is set under it, no
        #: read touches stdin, whose blocking mode may then be restored (see serve()).
        self._hosted_read = threading.Lock()
        self._hosting_over = False
        #: Lines a hosting thread read and has not accepted yet: it accepts each just before
        #: running it, so the first task of a read is answered before the others are parsed
        #: (a read of a few lines, as the Go worker sends them: a burst is accepted whole).
        #: Whoever takes a line (that thread, or the shutdown) accepts it under ``_accepting``,
        #: so that each is accepted once (see _close_admission).
        self._unaccepted: collections.deque[bytes] = collections.deque()
        #: The tasks of a burst that reading on accepted whole (see _read_on): the host's next
        #: read returns them, as a list, before reading more. Taken under ``_accepting``.
        self._read_ahead: list[Task] = []
        self._accepting = threading.Lock()
        #: stdin and the inline thread's interrupt fd, polled together (built on first use),
        #: with the interrupt fd it was built for.
        self._poll: tuple[int | None, Callable[[float | None], list[tuple[int, int]]]] | None = None
        #: How the thread reading stdin waits once no task is open (one thread waits at a time: _hosted_read).
        self._stdin_wait = SpinWait(spin_wait_s)
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
        host = None
        restore_blocking: Callable[[], None] = _nothing
        try:
            self.runner.on_fatal = self._on_fatal
            self._stdin_fd = stdin_fd
            self._stdin = _stdin_reader(stdin_fd)
            host = None if self.one_shot else self.runner.stdin_host()
            log.info("ready: %r", self.runner)
            self.channel.send(READY_LINE)
            if self.channel.shared is not None and self.channel.shared.has_writers:
                # Written before any request is read: a child process of the runner may write an
                # answer itself as soon as it has a task, and no answer may precede the ready line.
                self.channel.flush()
            if host is None:
                self.inflight.answer_in_place = self.runner.answers_in_place
                self._start_reader()
            else:
                # The threads that run the tasks read stdin and answer each task as it finishes:
                # no reader thread hands them tasks, no writer thread is woken.
                self.inflight.answer_in_place = True
                restore_blocking = _stdin_nonblocking(stdin_fd)
                self._stdin_nonblocking = restore_blocking is not _nothing
                self._in_turn = host.runs_what_it_reads
                host.host(
                    HostedStdin(
                        self._read_chunk_or_fail,
                        stdin_fd,
                        self.inflight.has_room,
                        self.channel.together,
                        self.channel.shared,
                    )
                )
            while self._reason is None:
                os.read(self._wake_r, 64)
            return self._shut_down()
        finally:
            restore()  # first: the handler writes to the pipe without the lock
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = -1
            if host is not None:
                host.stop_hosting()
                # A thread may have taken the read function before stop_hosting() and read once
                # more: in blocking mode, with stdin open and quiet, that read would never return.
                with self._hosted_read:
                    self._hosting_over = True
                restore_blocking()

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

    def _start_reader(self) -> None:
        threading.Thread(target=self._read_or_fail, name="runqy-reader", daemon=True).start()

    def _read_or_fail(self) -> None:
        try:
            self._read_and_submit()
        except BaseException as exc:
            log.critical("the stdin reader failed", exc_info=exc)
            self._stop_with(StopReason.FATAL)

    def _read_chunk_or_fail(self, interrupt_fd: int, read_on: ReadOn | None = None) -> Iterable[Task] | None:
        """:meth:`_read_chunk` for the threads that host reading, which must go on running tasks if reading fails.

        ``read_on``: see :class:`~runqy.inline.ReadChunk`.
        """
        with self._hosted_read:
            if self._hosting_over:
                return []  # as if interrupted: the host has been told to stop reading
            try:
                return self._read_chunk(interrupt_fd, self._in_turn, read_on)
            except Exception as exc:
                log.critical("reading stdin failed", exc_info=exc)
                self._stop_with(StopReason.FATAL)
                return None

    def _read_and_submit(self) -> None:
        """The reader thread, for a runner without an inline thread: each chunk's tasks go in one hand-off."""
        while (read := self._read_chunk()) is not None:
            tasks = list(read)  # already accepted: read without in_turn
            self._submit(tasks)
            if self.one_shot and tasks:
                self._stop_with(StopReason.ONE_SHOT)
                return

    def _read_chunk(
        self, interrupt_fd: int | None = None, in_turn: bool = False, read_on: ReadOn | None = None
    ) -> Iterable[Task] | None:
        """Read what stdin holds (one read) and accept its lines; None once stdin is closed.

        See :meth:`_read_lines`; once shutdown began, also tells a main thread waiting
        for stdin to be read (refused lines are sent by then).
        """
        tasks = self._read_lines(interrupt_fd, in_turn, read_on)
        if self._reason is not None:
            with self._read_done:
                self._read_done.notify_all()
        return tasks

    def _read_lines(
        self, interrupt_fd: int | None, in_turn: bool = False, read_on: ReadOn | None = None
    ) -> Iterable[Task] | None:
        """Read what stdin holds (one read) and accept its lines; None once stdin is closed.

        When stdin has nothing yet, waits for it or for ``interrupt_fd``, and returns []
        when only that fd became readable: the inline thread's readers are interrupted
        so (see :mod:`runqy.inline`). ``in_turn``: each line is accepted as the caller
        iterates, not all before the first runs, and ``read_on`` may let the iteration
        go on with what stdin holds by then (see :meth:`_read_on`). Called by one thread at a time.
        """
        if (before := self._read_before(in_turn, read_on)) is not None:
            return before
        if self._eof:
            return None
        self.inflight.wait_for_room()
        try:
            chunk = self._read_stdin(interrupt_fd)
        except OSError as exc:
            log.error("cannot read stdin: %s", exc)
            chunk = b""
        if chunk is None:
            return []
        accept = self._accept
        if not chunk:
            self._eof = True
            # A last line without its newline is still a request; the lines another thread read
            # and has not accepted yet come first. All are admitted before the end is told.
            last_line, self._pending = self._pending, b""
            with self._accepting:
                tasks = self._accept_waiting_locked() + self._accept_all([last_line])
            self._stop_with(StopReason.EOF)
            return tasks
        lines = self._lines_of(chunk)
        if self.one_shot:
            for line in lines:
                if (task := accept(line)) is not None:
                    return [task]  # the lines after it are not read: this process serves one task
            return []
        if in_turn and self._leave_in_turn(lines):
            return self._accept_in_turn(read_on)
        # All accepted now: for the reader thread; for a burst, whose answers then go out several
        # to a write (see InFlight.answer); or, once admission is closed, refused before the main
        # thread can end the process.
        return self._accept_all(lines)

    def _read_before(self, in_turn: bool, read_on: ReadOn | None) -> Iterable[Task] | None:
        """What was read and not run yet, which comes before reading more; None when nothing was.

        A burst that reading on accepted whole (see :meth:`_read_on`), or lines a thread
        read and stopped running (the thread runner's guard took its turn away, or the
        inline thread's helper reads now).
        """
        if self._read_ahead:
            with self._accepting:
                tasks, self._read_ahead = self._read_ahead, []
            if tasks:  # else the shutdown took them (see _close_admission)
                return tasks
        if in_turn and self._unaccepted:
            return self._accept_in_turn(read_on)
        return None

    def _lines_of(self, chunk: bytes) -> list[bytes]:
        """The complete lines that ``chunk`` ends; its incomplete last line waits for the next read."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        return lines

    def _leave_in_turn(self, lines: list[bytes]) -> bool:
        """Leave ``lines`` to be accepted one by one as they run; False for a burst, or once admission is closed."""
        if len(lines) > _BURST_OPEN:
            return False
        with self._accepting:
            if self.inflight.closed:
                return False
            self._unaccepted.extend(lines)
            return True

    def _accept_all(self, lines: Iterable[bytes]) -> list[Task]:
        """Accept each line (see :meth:`_accept`): the tasks admitted."""
        accept = self._accept
        return [task for line in lines if (task := accept(line)) is not None]

    def _accept_waiting_locked(self) -> list[Task]:
        """Accept the lines read and not accepted yet, in order (under ``_accepting``)."""
        tasks = self._accept_all(self._unaccepted)
        self._unaccepted.clear()
        return tasks

    def _accept_in_turn(self, read_on: ReadOn | None) -> Iterator[Task]:
        """Accept the lines read so far, one each time the caller asks for the next task.

        Then, while ``read_on`` allows, go on with the lines stdin holds by then (see :meth:`_read_on`).
        """
        accepting, unaccepted, accept = self._accepting, self._unaccepted, self._accept
        while True:
            with accepting:
                line = unaccepted.popleft() if unaccepted else None
                task = None if line is None else accept(line)
            if task is not None:
                yield task
            elif line is None and (read_on is None or not self._read_on(read_on)):
                return

    def _read_on(self, read_on: ReadOn) -> bool:
        """Once a hosted read's tasks are all run: take the lines stdin already holds, without waiting.

        The thread that ran them reads again here, rather than going back to its own loop
        first: with the Go worker's few requests in flight, those arrive while the tasks
        before them run, and going round that loop first took about 3 µs per read (the
        sequential runner answers 1.15x as many no-op tasks at 8 in flight without it).
        Returns True when the lines read wait in ``_unaccepted`` for the caller to go on
        with. False when nothing was read (stdin holds nothing yet or is closed, the host
        must not read now as ``read_on()`` says, or shutdown began), and for a burst: its
        tasks, accepted whole, wait in ``_read_ahead`` for the host's next read, which
        returns them as a list. Yielded from here, the thread runner's holder would lose
        those after a task that cost it the read turn, as it stops iterating then. Either
        way the host then reads as usual, through its own loop.
        """
        # Every read holds this lock, also while it waits for stdin: held by another thread, it
        # means that one reads now (the host's helper), and this one does not wait for it.
        if not self._hosted_read.acquire(blocking=False):
            return False
        try:
            if (
                self._hosting_over
                or self._reason is not None
                or not self._stdin_nonblocking
                or not read_on()
                or not self.inflight.has_room()
            ):
                return False
            try:
                chunk = self._stdin.read(_READ_CHUNK_BYTES)
            except OSError:
                return False  # the next read meets it again, and says so
            if not chunk:
                return False  # nothing yet (None), or the end of stdin, which the next read meets again
            lines = self._lines_of(chunk)
            if self._leave_in_turn(lines):
                return True
            tasks = self._accept_all(lines)  # a burst, or refusals once admission closed
            with self._accepting:
                self._read_ahead.extend(tasks)
            return False
        finally:
            self._hosted_read.release()

    def _close_admission(self) -> None:
        """Admit the lines read and not accepted yet, then accept no more.

        What was read before the stop is admitted, as if each line had been accepted when
        read: it runs, in order, after the task its thread is running, within the
        shutdown timeout. Under ``_accepting``, so that no line is added or taken meanwhile.
        """
        with self._accepting:
            read = self._read_ahead + self._accept_waiting_locked()
            self._read_ahead = []
            self.inflight.close()
        self._submit(read)

    def _read_stdin(self, interrupt_fd: int | None) -> bytes | None:
        """One read of stdin; None when ``interrupt_fd`` became readable first.

        stdin is non-blocking while a host reads it (see serve()): so a read finds requests
        already waiting with one system call, and only waits (polling, where the interrupt
        fd can end the wait) when there are none. ``FileIO`` returns None then, where
        ``os.read`` would raise: an exception costs more than the read.
        """
        chunk = self._stdin.read(_READ_CHUNK_BYTES)
        if chunk is None and self._stdin_first(interrupt_fd):
            chunk = self._stdin.read(_READ_CHUNK_BYTES)
        return chunk

    def _stdin_first(self, interrupt_fd: int | None) -> bool:
        """Wait until stdin or ``interrupt_fd`` is readable; True when stdin is (or is closed)."""
        if self._poll is None or self._poll[0] != interrupt_fd:
            poller = select.poll()
            poller.register(self._stdin_fd, select.POLLIN)
            if interrupt_fd is not None:
                poller.register(interrupt_fd, select.POLLIN)
            self._poll = (interrupt_fd, in_seconds(poller))
        poll = self._poll[1]
        # With tasks open, they run on other threads: polling would take the GIL from them.
        ready = poll(None) if len(self.inflight) else self._stdin_wait.wait(poll)
        return any(fd == self._stdin_fd for fd, _ in ready)

    def _accept(self, line: bytes) -> Task | None:
        """Parse and admit one line: the accepted task, or None when the line was answered or blank."""
        try:
            request = self._parse(line)
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

    def _submit(self, tasks: list[Task]) -> None:
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
        # The kernel may deliver a signal to any thread, say one polling stdin; Python then runs
        # the handler only once the main thread runs again, and it sleeps on the wake pipe. The
        # wake-up fd makes the C-level handler write there from whichever thread got the signal.
        previous_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

        def restore() -> None:
            signal.set_wakeup_fd(previous_wakeup_fd)
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
        self._close_admission()
        if reason is StopReason.FATAL:
            drained = False
        elif reason is StopReason.SIGNAL:
            drained = self.inflight.wait_idle(self.shutdown_timeout_s)
        else:
            # stdin closed (one-shot, or the worker went away): the tasks we hold are bounded by their own timeouts.
            drained = self.inflight.wait_idle(None)
        if not drained:
            # Children that write answers to stdout themselves stop first: none may answer a task given up on.
            self.runner.reclaim_stdout()
            why = (
                "worker process is restarting after a runner failure"
                if reason is StopReason.FATAL
                else f"worker shut down before the task finished (shutdown_timeout_s={self.shutdown_timeout_s:g})"
            )
            count = self.inflight.give_up(why)
            log.warning("gave up on %d unfinished task(s): %s", count, why)
            # Answers claimed by their threads just before the give-up may still be on their way.
            self.inflight.wait_idle(_LAST_ANSWERS_S)
        if reason is StopReason.SIGNAL:
            self._refuse_what_stdin_holds()
        self.channel.flush()
        # The runner stays started: its owner reuses it for the next run, and closes it.
        self.drained = drained
        return 1 if reason is StopReason.FATAL else 0

    def _refuse_what_stdin_holds(self) -> None:
        """Let the readers take what stdin holds now: each request is refused ``retry: true``.

        The Go worker keeps up to ``concurrency`` requests on their way; those sent before
        the signal and not read yet when the last task finished would otherwise be left
        in the pipe unanswered. The readers refuse them (admission is closed); this waits
        until stdin has nothing left to read, for at most _LAST_READS_S, so that a sender
        that goes on writing cannot hold the exit up.
        """
        deadline = time.monotonic() + _LAST_READS_S
        stdin = select.poll()
        stdin.register(self._stdin_fd, select.POLLIN)
        with self._read_done:
            # A reader notifies under this lock after its read, so a read between the poll
            # and the wait still ends the wait.
            while not self._eof and stdin.poll(0) and (left_s := deadline - time.monotonic()) > 0:
                self._read_done.wait(left_s)


def _nothing() -> None:
    pass


def _stdin_reader(fd: int) -> io.RawIOBase:
    """stdin as a raw file that leaves the descriptor open; an empty one, with an error logged, if it is closed."""
    try:
        return io.FileIO(fd, "r", closefd=False)
    except OSError as exc:
        log.error("cannot read stdin: %s", exc)
        return io.FileIO(os.devnull, "r")


def _stdin_nonblocking(fd: int) -> Callable[[], None]:
    """Make a pipe on stdin non-blocking, so a reader that finds requests waiting needs no poll first.

    Only a pipe (as the Go worker gives): a terminal left non-blocking after an abrupt
    exit would break the shell that shares it. Returns how to undo it.
    """
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode) or not os.get_blocking(fd):
            return _nothing
        os.set_blocking(fd, False)
    except OSError:
        return _nothing
    return partial(_set_blocking, fd)


def _set_blocking(fd: int) -> None:
    with contextlib.suppress(OSError):  # stdin may be closed by now
        os.set_blocking(fd, True)
