"""The exception hierarchy: every error runqy raises derives from :class:`RunqyError`."""

from __future__ import annotations

from concurrent.futures import BrokenExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runqy.protocol import TaskResponse

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "HandlerNotRegistered",
    "HandlerUnsupported",
    "LoadFailed",
    "ProtocolError",
    "RetryableError",
    "RunnerBroken",
    "RunnerClosed",
    "RunqyError",
    "TaskFailed",
    "TaskTimeout",
    "WorkerCrashed",
]


class RunqyError(Exception):
    """Raised for any failure that runqy itself detects; the root of this hierarchy."""


class RetryableError(RunqyError):
    """Raised by a handler to say that the task failed but may succeed if tried again.

    runqy retries it locally up to ``max_retries`` times, then answers the Go worker
    with ``retry: true`` so that the queue retries it later.
    """


class ConfigError(RunqyError, ValueError):
    """Raised when settings are invalid: names the field, the source and the fix.

    ``fields`` lists the dotted settings involved, so that the caller can name the
    source each of them came from.
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class ConfigWarning(UserWarning):
    """Issued when a setting is valid but has no effect with the chosen runner, and how to fix that.

    Turn these into errors with ``warnings.simplefilter("error", ConfigWarning)`` or
    ``PYTHONWARNINGS=error::runqy.errors.ConfigWarning``. ``fields`` lists the
    dotted settings involved.
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class ProtocolError(RunqyError):
    """Raised when a line from the Go worker is not a valid task request.

    ``task_id`` is the id read from the line when one could be, else ``""``.
    """

    def __init__(self, message: str, task_id: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id


class HandlerNotRegistered(RunqyError):
    """Raised when a worker is started without a ``@task`` handler."""


class HandlerUnsupported(RunqyError):
    """Raised at start when the chosen runner cannot run the handler (a plain ``def`` on the async runner)."""


class LoadFailed(RunqyError):
    """Raised when the ``@load`` function of a worker raised; the cause is chained."""


class TaskFailed(RunqyError):
    """Raised when a task run by :meth:`runqy.Worker.map` failed; ``response`` is its error response.

    ``index`` is the payload's position in the input; ``retryable`` tells whether the
    failure was retryable (``RetryableError``, a timeout, an exception in ``retry_exceptions``).
    """

    def __init__(self, index: int, response: TaskResponse) -> None:
        super().__init__(f"task {index} failed: {response.error}")
        self.index = index
        self.response = response
        self.retryable = response.retry


class TaskTimeout(RunqyError, TimeoutError):
    """Raised when one attempt of a task ran longer than ``task_timeout_s``."""

    def __init__(self, timeout_s: float, attempt: int) -> None:
        super().__init__(f"task timed out: attempt {attempt} ran longer than task_timeout_s={timeout_s:g}")
        self.timeout_s = timeout_s
        self.attempt = attempt


class WorkerCrashed(RunqyError):
    """Raised when the process running a task died before answering it."""

    def __init__(self, exitcode: int | None, detail: str = "") -> None:
        self.exitcode = exitcode
        self.signal_name = _signal_name(exitcode)
        how = f"killed by {self.signal_name}" if self.signal_name else f"exited with code {exitcode}"
        super().__init__(f"worker process {how}{': ' + detail if detail else ''}")


class RunnerBroken(RunqyError, BrokenExecutor):
    """Raised when a runner can no longer run tasks (for example a crash loop); the process must restart."""


class RunnerClosed(RunqyError, RuntimeError):
    """Raised when a task is submitted to a runner that is not started, or already closed."""


def _signal_name(exitcode: int | None) -> str | None:
    """multiprocessing reports death by signal N as exit code -N."""
    import signal

    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"
