"""The child side of the process and hybrid runners: load once, then run the tasks sent over one pipe.

:func:`child_main` is the target of every child process. It isolates the child (own
session, fd 1 on stderr, no stdin, faulthandler, death with the parent), finds the
user's handler by module and name, runs ``@load``, says ready, and then runs what
the parent sends, one message per frame (tuples, see the tags below and ``_wire``).

The one seam between the process and the hybrid runner is here: a child with
``threads == 0`` runs the tasks of a message inline in its main thread, one after
the other in the order sent, and sends each answer before it starts the next task:
so the parent always knows which task was running when the child died, or overran
its timeout. A child with ``threads > 0`` runs them on the thread runner's
:class:`~runqy.runners.thread.ThreadPool`, one attempt per task, which gives
thread-level timeouts. Everything else (retries, hard timeouts, crashes, recycling)
is decided by the parent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import functools
import importlib
import importlib.util
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Final, NoReturn

from runqy.app import BoundHandler, Registry
from runqy.attempts import RetryPolicy, outcome_of
from runqy.batching import BatchSpec
from runqy.errors import HandlerNotRegistered, LoadFailed
from runqy.fdio import write_all
from runqy.observe.logs import LogFormat, configure_logging
from runqy.observe.telemetry import FAILED
from runqy.protocol import MAX_LINE_BYTES, TaskRequest, TaskResponse, encode_response
from runqy.runners._wire import FrameReader, encode
from runqy.shared_stdout import ATOMIC_BYTES, ChildStdout

__all__ = ["CHILD_ENV_VAR", "ChildSpec", "HandlerRef", "child_main"]

log = logging.getLogger("runqy")

#: Set in every child's environment: ``run()`` returns at once there, so a script that
#: calls it unguarded at import time does not start serving when a child re-imports it.
CHILD_ENV_VAR: Final = "RUNQY_CHILD_PROCESS"

# Parent -> child.
#: (TASKS, [(seq, attempt, request fields, write), ...]): tasks, each a call of its own; with
#: ``write``, a success is written to the protocol stream by the child itself (see runqy.shared_stdout).
TASKS: Final = 0
STOP: Final = 1  # (STOP,): exit once idle
BATCH: Final = 2  # (BATCH, [(seq, attempt, request fields), ...]): one call of a batch handler
# Child -> parent.
READY: Final = 0  # (READY, pid)
LOAD_FAILED: Final = 1  # (LOAD_FAILED, message)
#: (DONE, seq, attempt, task_id, result, error, retry, rss_bytes or 0, abandoned threads, outcome, duration_s, thread):
#: the outcome and duration travel with the answer, so that the parent counts every task.
DONE: Final = 2
RETIRE: Final = 3  # (RETIRE, reason): recycle me once my tasks are done
#: (WROTE, seq, attempt, task_id, rss_bytes or 0, abandoned threads, outcome, duration_s, thread):
#: a DONE whose response line the child wrote to the protocol stream itself.
WROTE: Final = 4

#: An encoded result this big cannot become a response line under MAX_LINE_BYTES (JSON of
#: any value is at least a third of its marshal or pickle), so it is refused here instead
#: of being copied through the pipe and into the parent's memory first.
_MAX_RESULT_FRAME_BYTES: Final = 3 * MAX_LINE_BYTES

#: How every success line ends (see runqy.protocol.encode_response).
_SUCCESS_END: Final = b',"error":null,"retry":false}\n'

#: Build a request from its fields in C (``TaskRequest(*fields)`` is a Python call).
_new_request: Final = functools.partial(tuple.__new__, TaskRequest)


@dataclass(frozen=True)
class HandlerRef:
    """Where a child finds a function: its module and qualified name (and the script, for ``__main__``)."""

    module: str
    qualname: str
    main_path: str | None = None

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> HandlerRef:
        module = getattr(fn, "__module__", None) or "__main__"
        main_path = getattr(sys.modules.get("__main__"), "__file__", None) if module == "__main__" else None
        return cls(module, getattr(fn, "__qualname__", repr(fn)), main_path)

    def resolve(self) -> Callable[..., Any]:
        """Import the module (or find the re-imported script) and return the function; raises LoadFailed."""
        try:
            obj: Any = self._module()
            for part in self.qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError, LookupError, OSError) as exc:
            raise LoadFailed(f"a child process cannot find {self.module}.{self.qualname}: {exc}") from exc
        if not callable(obj):
            raise LoadFailed(f"{self.module}.{self.qualname} is not callable in the child process")
        return obj  # type: ignore[no-any-return]

    def _module(self) -> ModuleType:
        if self.module != "__main__":
            return importlib.import_module(self.module)
        # Under spawn, multiprocessing already ran the parent's script again as __mp_main__.
        main = sys.modules.get("__mp_main__")
        if main is not None and _has_path(main, self.qualname):
            return main
        if self.main_path is None:
            raise LookupError("the handler lives in __main__, which has no file a child process could import")
        spec = importlib.util.spec_from_file_location("__mp_main__", self.main_path)
        if spec is None or spec.loader is None:
            raise LookupError(f"cannot import the worker script {self.main_path}")
        main = importlib.util.module_from_spec(spec)
        sys.modules["__mp_main__"] = main
        spec.loader.exec_module(main)
        return main


@dataclass(frozen=True)
class ChildSpec:
    """Everything a child needs, pickled once per child start."""

    handler: HandlerRef
    loader: HandlerRef | None
    #: 0: run one task at a time inline; N: run up to N at once on threads (hybrid).
    threads: int = 0
    #: Thread-level timeouts inside the child (hybrid); local retries stay with the parent.
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: Send the child's RSS with every answer, for the between-task memory check.
    report_rss: bool = False
    log_level: int = logging.INFO
    log_format: LogFormat = "text"
    #: The handler takes lists of payloads; the parent forms the batches.
    batch: BatchSpec | None = None

    @classmethod
    def for_registry(cls, registry: Registry, **options: Any) -> ChildSpec:
        """Record where children find the registry's functions; fails now for functions they could not find."""
        if registry.handler is None:
            raise HandlerNotRegistered("no task handler registered: decorate your handler function with @task")
        handler = HandlerRef.of(registry.handler)
        loader = None if registry.loader is None else HandlerRef.of(registry.loader)
        for ref in (handler, loader):
            if ref is not None and ("<locals>" in ref.qualname or (ref.module == "__main__" and ref.main_path is None)):
                raise LoadFailed(
                    f"{ref.module}.{ref.qualname} cannot be found by child processes: they import the worker "
                    "module by name, so @task and @load functions must be defined at the top level of a file"
                )
        return cls(handler, loader, batch=registry.batch_spec(), **options)


def child_main(conn: multiprocessing.connection.Connection, spec: ChildSpec, stdout: ChildStdout | None) -> None:
    """Entry point of a child process; never returns (exits with ``os._exit``).

    ``stdout``: the protocol stream, when the parent shares it (see :mod:`runqy.shared_stdout`).
    """
    os.environ[CHILD_ENV_VAR] = "1"
    _isolate()
    _die_with_parent()
    # The connection's own descriptor, read and written directly (see _wire).
    sender = _Sender(conn.fileno(), spec.report_rss, stdout)
    try:
        registry = Registry()
        # max_wait 0 inside the child: the parent already waited for the batch it sent.
        batch_size = spec.batch.size if spec.batch is not None else None
        registry.task(batch_size=batch_size)(spec.handler.resolve())
        if spec.loader is not None:
            registry.load(spec.loader.resolve())
        # After importing the worker's module, whose own logging setup wins, as in the parent.
        configure_logging(spec.log_level, spec.log_format, prefix=f"runqy[child {os.getpid()}]")
        handler = registry.bind()
        handler.retry_exceptions = spec.policy.retry_exceptions
    except Exception as exc:  # any load failure must reach the parent, which fails start-up
        configure_logging(spec.log_level, spec.log_format, prefix=f"runqy[child {os.getpid()}]")
        log.exception("the worker cannot be loaded in child process %d", os.getpid())
        sender.send((LOAD_FAILED, f"{exc} (in child process {os.getpid()})"))
        _exit(1)
    host: _Host = _InlineHost(handler, sender) if spec.threads == 0 else _ThreadHost(handler, sender, spec)
    sender.send((READY, os.getpid()))
    reader = FrameReader(conn.fileno())
    while True:
        try:
            messages = reader.read()
        except OSError:
            messages = None
        if messages is None:
            _exit(0)  # the parent is gone or closed our pipe: nobody is left to answer
        for tag, *body in messages:
            if tag == STOP:
                _exit(0)
            if tag == BATCH:
                host.run_batch([(seq, attempt, _new_request(fields)) for seq, attempt, fields in body[0]])
            else:
                host.run_all([(seq, attempt, _new_request(fields), alone) for seq, attempt, fields, alone in body[0]])


def _isolate() -> None:
    """Make the child safe to kill and unable to touch the protocol stream."""
    # Its own session and process group: killing the group also kills its subprocesses.
    with contextlib.suppress(OSError):
        os.setsid()
    # fd 1 is the Go worker's protocol stream in a parent that has not claimed it yet; a C
    # library printing here would corrupt it, so fd 1 becomes stderr (never /dev/null:
    # crash tracebacks must stay visible).
    sys.stdout.flush()
    os.dup2(2, 1)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    # Requests are the parent's; a child reading fd 0 would steal protocol lines.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    faulthandler.enable()


def _die_with_parent() -> None:
    """Exit, with every process of our group, when the parent dies, even in the middle of a task.

    A thread waits on the parent's sentinel (a pipe the parent holds open). The kernel's
    parent-death signal is not used: it would kill this process before the thread could
    kill the group, and the task's subprocesses would live on. The cost: a child stuck
    in C code that never releases the GIL outlives a parent killed with SIGKILL.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        # Take our subprocesses down too: nobody would ever reap or stop them.
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="runqy-parent-watch", daemon=True).start()


def _exit(code: int) -> NoReturn:
    # os._exit: interpreter shutdown would wait for abandoned attempt threads forever.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


class _Sender:
    """Writes messages to the parent; one lock, because threads of a hybrid child answer concurrently."""

    def __init__(self, fd: int, report_rss: bool, stdout: ChildStdout | None = None) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._rss: Callable[[], int] = _rss_reader() if report_rss else _no_rss
        self._stdout = stdout

    def send(self, message: tuple[Any, ...]) -> None:
        self._write(encode(message))

    def done(self, seq: int, attempt: int, response: TaskResponse, duration_s: float, abandoned: int = 0) -> None:
        self._write(self._answer(seq, attempt, response, duration_s, abandoned))

    def done_alone(self, seq: int, attempt: int, response: TaskResponse, duration_s: float) -> None:
        """Answer a task whose success this child may write to the protocol stream itself.

        Anything else (an error, which the parent may retry; a line too long to be written
        whole; a revoked child) goes through the parent as :meth:`done` sends it.
        """
        stdout = self._stdout
        if stdout is not None and response.error is None:
            line = encode_response(response)
            # A result that is not JSON became an error line: the parent reports it as one.
            if len(line) <= ATOMIC_BYTES and line.endswith(_SUCCESS_END) and stdout.write_answer(seq, line):
                notice = (WROTE, seq, attempt, response.task_id, self._rss(), 0, *_observed(response, duration_s))
                self._write(encode(notice))
                return
        self.done(seq, attempt, response, duration_s)

    def done_together(self, answers: list[tuple[int, int, TaskResponse]], duration_s: float) -> None:
        """The answers of one batch call, in one write: they were ready at the same moment."""
        self._write(b"".join(self._answer(seq, attempt, response, duration_s, 0) for seq, attempt, response in answers))

    def _answer(self, seq: int, attempt: int, response: TaskResponse, duration_s: float, abandoned: int) -> bytes:
        """The frame of one answer; a result that cannot be sent fails only its own task."""
        task_id, result, error, retry = response
        counted = (self._rss(), abandoned, *_observed(response, duration_s))
        message = (DONE, seq, attempt, task_id, result, error, retry, *counted)
        try:
            data = encode(message)
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises, the task still gets one answer
            data = _failure(seq, attempt, task_id, f"result cannot be sent from the child process: {exc!r}")
        if len(data) > _MAX_RESULT_FRAME_BYTES:
            size_mib = len(data) / 2**20
            why = f"result is about {size_mib:.0f} MiB; a response line must stay under {MAX_LINE_BYTES // 2**20} MiB"
            data = _failure(seq, attempt, task_id, why + ": store large outputs elsewhere and return a reference")
        return data

    def _write(self, data: bytes) -> None:
        with self._lock:
            try:
                write_all(self._fd, data)
            except OSError:
                _exit(0)  # the parent is gone


def _observed(response: TaskResponse, duration_s: float) -> tuple[str, float, str]:
    """What the parent counts of an answer: its outcome, how long it ran, and the thread that ran it."""
    return outcome_of(response), duration_s, threading.current_thread().name


def _failure(seq: int, attempt: int, task_id: str, error: str) -> bytes:
    thread = threading.current_thread().name
    return encode((DONE, seq, attempt, task_id, None, error, False, 0, 0, FAILED, None, thread))


def _no_rss() -> int:
    return 0


def _rss_reader() -> Callable[[], int]:
    import psutil

    me = psutil.Process()
    return lambda: int(me.memory_info().rss)


class _Host:
    """Runs the tasks of one child: the seam between the process and the hybrid runner."""

    def run_all(self, tasks: list[tuple[int, int, TaskRequest, bool]]) -> None:
        """Run tasks sent in one message, each as a call of its own (the flag: may write its own answer)."""
        raise NotImplementedError

    def run_batch(self, tasks: list[tuple[int, int, TaskRequest]]) -> None:
        raise NotImplementedError


class _InlineHost(_Host):
    """One task at a time in the main thread: no hand-off, and the handler may use signals."""

    def __init__(self, handler: BoundHandler, sender: _Sender) -> None:
        self._handler = handler
        self._sender = sender

    def run_all(self, tasks: list[tuple[int, int, TaskRequest, bool]]) -> None:
        execute, clock = self._handler.execute_blocking, time.perf_counter
        done, done_alone = self._sender.done, self._sender.done_alone
        for seq, attempt, request, alone in tasks:
            started = clock()
            response = execute(request, attempt)
            # Sent before the next task starts: the parent's account of which task is running
            # (for its timeout, and for the blame when this process dies) depends on it, and
            # so does its account of the answers written here (the last one's seq says which).
            (done_alone if alone else done)(seq, attempt, response, clock() - started)

    def run_batch(self, tasks: list[tuple[int, int, TaskRequest]]) -> None:
        started = time.perf_counter()
        responses = self._handler.execute_batch_blocking([(request, attempt) for _, attempt, request in tasks])
        answers = [(seq, attempt, response) for (seq, attempt, _), response in zip(tasks, responses, strict=True)]
        self._sender.done_together(answers, time.perf_counter() - started)


class _ThreadHost(_Host):
    """Up to ``spec.threads`` tasks at once on the thread runner's pool, which times each attempt."""

    def __init__(self, handler: BoundHandler, sender: _Sender, spec: ChildSpec) -> None:
        from runqy.runners.thread import ThreadPool  # here: a process-runner child never needs it

        self._sender = sender
        # One attempt per message: the parent owns retries, so that a retry may run in another child.
        policy = dataclasses.replace(spec.policy, max_retries=0, retry_backoff_s=0.0)
        self._pool = ThreadPool(handler, policy, spec.threads, name="runqy-child")
        self._max_abandoned = spec.policy.max_abandoned_threads
        self._retiring = False

    def run_all(self, tasks: list[tuple[int, int, TaskRequest, bool]]) -> None:
        started = time.perf_counter()
        for seq, attempt, request, _ in tasks:  # the parent never lets a hybrid child write: it answers out of order
            self._pool.submit(request, functools.partial(self._answer, seq, attempt, started), attempt)

    def run_batch(self, tasks: list[tuple[int, int, TaskRequest]]) -> None:
        # Queued together: a free thread of the pool takes them as one call.
        started = time.perf_counter()
        self._pool.submit_attempts(
            [
                (request, functools.partial(self._answer, seq, attempt, started), attempt)
                for seq, attempt, request in tasks
            ]
        )

    def _answer(self, seq: int, attempt: int, started: float, response: TaskResponse) -> None:
        abandoned = self._pool.engine.abandoned
        # The request to be recycled goes first: the parent then gives this child no new
        # task from the moment it learns of this answer.
        if not self._retiring and abandoned > self._max_abandoned:
            # Stuck threads cannot be stopped; only replacing this process frees them.
            self._retiring = True
            reason = f"{abandoned} timed-out threads still running (max_abandoned_threads={self._max_abandoned})"
            self._sender.send((RETIRE, reason))
        self._sender.done(seq, attempt, response, time.perf_counter() - started, abandoned)


def _has_path(module: ModuleType, qualname: str) -> bool:
    obj: Any = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True
