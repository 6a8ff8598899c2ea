"""The Runner contract every execution strategy implements."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar

from runqy.app import Registry
from runqy.observe.telemetry import TaskObserver, Telemetry
from runqy.protocol import TaskRequest, TaskResponse

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.config.settings import RunqySettings
    from runqy.inline import InlineThread, StdinHost

__all__ = ["Capabilities", "Reply", "Runner"]

log = logging.getLogger("runqy")

#: Called exactly once with a task's final response, from whichever thread finished it.
Reply = Callable[[TaskResponse], None]


@dataclass(frozen=True)
class Capabilities:
    """What a runner can promise, so that settings it cannot honour are refused up front."""

    #: A timed-out task is really stopped (its process killed), not just abandoned.
    hard_timeout: bool
    #: Every task sees the same ``@load`` context object (one process).
    shares_load_context: bool
    #: Tasks run on several cores at once, even when they hold the GIL.
    cpu_parallel: bool


class Runner(ABC):
    """Runs tasks for the serving loop. Subclasses implement :meth:`start`, :meth:`submit` and :meth:`close`.

    A runner is started once and then reused by every run of its worker; nothing is
    recreated per run. It is a context manager that closes itself.
    """

    capabilities: ClassVar[Capabilities]
    #: Every answer comes from one thread that nothing else needs meanwhile (an event loop):
    #: with few tasks in flight it writes each answer itself rather than wake the writer thread.
    answers_in_place: ClassVar[bool] = False

    def __init__(self) -> None:
        #: Called when the runner can no longer run tasks; the serving loop then exits non-zero.
        self.on_fatal: Callable[[BaseException], None] = _log_fatal
        #: Told what becomes of every task (set before :meth:`start`); counts and logs problems by default.
        self.telemetry: TaskObserver = Telemetry()

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: RunqySettings) -> Self:
        """Build the runner from resolved settings."""

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many tasks run at once."""

    @abstractmethod
    def start(self, registry: Registry) -> None:
        """Run ``@load`` wherever handlers will run and get ready to take tasks; idempotent.

        Raises :class:`~runqy.errors.LoadFailed` when loading failed.
        """

    @abstractmethod
    def submit(self, request: TaskRequest, reply: Reply) -> None:
        """Start running ``request``; ``reply`` is called exactly once with its final response.

        Returns at once: it never waits for the task, so the serving loop keeps reading.
        """

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        """Submit several tasks at once; runners override it to take a batch in one hand-off."""
        for request, reply in tasks:
            self.submit(request, reply)

    def inline_thread(self) -> InlineThread | None:
        """The one thread that runs ``@load`` and every task of this started runner, if it has one.

        The serving loop then reads stdin on that thread between tasks and runs each
        task where it was read (see :mod:`runqy.inline`). Only for a runner that runs
        one task at a time in this process with nothing that could abandon a thread.
        """
        return None

    def stdin_host(self) -> StdinHost | None:
        """The threads that read stdin between their tasks, if this started runner has them.

        The serving loop then starts no reader thread: it hands them its reading, and
        every answer is written by the thread that made it. By default the inline thread.
        """
        return self.inline_thread()

    def reclaim_stdout(self) -> None:
        """Answer every task through this process from now on: the serving loop is about to answer the open ones.

        For a runner whose child processes write answers to stdout themselves: once this
        returns, they write none, and every answer they wrote has been replied.
        """
        return  # only child processes write answers themselves

    @abstractmethod
    def close(self, timeout_s: float | None = None) -> None:
        """Finish the tasks already submitted (waiting at most ``timeout_s``), then release everything."""

    @property
    def abandoned_attempts(self) -> int:
        """Timed-out attempts still running in threads that could not be stopped."""
        return 0

    def child_memory(self) -> dict[int, int]:
        """Resident memory (bytes, with descendants) of each child process by pid; none for in-process runners."""
        return {}

    def run_task(self, request: TaskRequest) -> TaskResponse:
        """Run one task and wait for its response."""
        done = threading.Event()
        box: list[TaskResponse] = []

        def reply(response: TaskResponse) -> None:
            box.append(response)
            done.set()

        self.submit(request, reply)
        done.wait()
        return box[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} capacity={self.capacity}>"


def _log_fatal(exc: BaseException) -> None:
    log.critical("runner failed: %s", exc)
