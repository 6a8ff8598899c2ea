"""What a handler can learn about the task it runs: :func:`current_task`, or :func:`current_batch` in batches."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from runqy.errors import RunqyError
from runqy.protocol import TaskRequest

__all__ = ["Cancellation", "TaskInfo", "current_batch", "current_task"]


class Cancellation(Protocol):
    """The cancellation flag of one attempt, as a handler sees it (a :class:`threading.Event` is one).

    Attempts get a lighter flag than an ``Event``: creating an ``Event`` costs more
    than running a trivial task.
    """

    def is_set(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """The task a handler is running, available through :func:`current_task` in any thread or process."""

    task_id: str
    type: str
    queue: str
    #: How often the Go worker has retried this task before (0 on its first delivery).
    retry_count: int
    #: How often the Go worker will retry it at most.
    max_retry: int
    #: This attempt's number within the local retries of runqy, starting at 1.
    attempt: int = 1
    _cancel: Cancellation = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once runqy gave up on this attempt (it timed out); a cooperative handler stops then."""
        return self._cancel.is_set()

    @classmethod
    def for_request(cls, request: TaskRequest, attempt: int, cancel: Cancellation) -> TaskInfo:
        return cls(
            request.task_id, request.type, request.queue, request.retry_count, request.max_retry, attempt, cancel
        )


# What runs now, as (request, attempt, cancel flag): a TaskInfo is only built when a
# handler asks for one, which keeps it off the hot path of handlers that never do.
_current: ContextVar[tuple[TaskRequest, int, Cancellation]] = ContextVar("runqy_current_task")
# What a batch handler runs now: each task with its attempt number, and the call's one cancel flag.
_current_batch: ContextVar[tuple[list[tuple[TaskRequest, int]], Cancellation]] = ContextVar("runqy_current_batch")


def current_task() -> TaskInfo:
    """Return the task being handled by the calling code.

    Raises :class:`RunqyError` when called outside a task handler.
    """
    try:
        request, attempt, cancel = _current.get()
    except LookupError:
        if _current_batch.get(None) is not None:
            raise RunqyError(
                "current_task() is not available in a batch handler (@task(batch_size=...)): "
                "it runs several tasks at once; use current_batch(), which lists them in payload order"
            ) from None
        raise RunqyError("current_task() is only available while a @task handler runs") from None
    return TaskInfo.for_request(request, attempt, cancel)


def current_batch() -> list[TaskInfo]:
    """Return the tasks of the running batch handler call, in the order of its payloads.

    Raises :class:`RunqyError` when called outside a batch handler.
    """
    try:
        tasks, cancel = _current_batch.get()
    except LookupError:
        raise RunqyError(
            "current_batch() is only available while a batch handler (@task(batch_size=...)) runs"
        ) from None
    return [TaskInfo.for_request(request, attempt, cancel) for request, attempt in tasks]
