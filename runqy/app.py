"""The handler registry behind ``@task`` and ``@load``, and the binding of a handler to its context."""

from __future__ import annotations

import atexit
import copy
import inspect
import logging
import threading
import traceback
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, overload

from runqy.batching import BatchSpec
from runqy.context import Cancellation, _current, _current_batch
from runqy.errors import HandlerNotRegistered, LoadFailed, RetryableError
from runqy.protocol import TaskRequest, TaskResponse, new_response

if TYPE_CHECKING:
    # asyncio is imported only for async handlers: every process-runner child imports
    # this module, and a replacement child serves that much later.
    from runqy.aio import EventLoopThread

__all__ = ["BoundHandler", "Registry", "batch_responses", "default_registry", "load", "task"]

log = logging.getLogger("runqy")

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Holds the one ``@task`` handler of a worker and its optional ``@load`` function."""

    def __init__(self) -> None:
        self.handler: Callable[..., Any] | None = None
        self.loader: Callable[[], Any] | None = None
        #: The handler is a plain function that may run in a thread pool beside an event loop (async runner).
        self.offload = False
        #: ``@task(batch_size=...)``: the handler takes a list of payloads; None for one payload per call.
        self.batch_size: int | None = None
        #: ``@task(max_wait_ms=...)``: how long a short batch may wait for more tasks; None for the setting.
        self.max_wait_ms: float | None = None

    @overload
    def task(self, fn: F, /, *, offload: bool = False) -> F: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        batch_size: int | None = None,
        max_wait_ms: float | None = None,
        offload: bool = False,
    ) -> Callable[[F], F]: ...
    def task(
        self,
        fn: F | None = None,
        /,
        *,
        batch_size: int | None = None,
        max_wait_ms: float | None = None,
        offload: bool = False,
    ) -> F | Callable[[F], F]:
        """Register the task handler: ``handler(payload)`` or ``handler(payload, ctx)``; may be ``async def``.

        With ``batch_size=N`` it is a batch handler: ``handler(payloads)`` or
        ``handler(payloads, ctx)`` gets a list of up to N payloads and returns a list of
        as many results, in order (see docs/batching.md). ``max_wait_ms`` is how long a
        batch short of N may wait for more tasks (default 0: never). ``offload=True``
        declares a plain ``def`` handler safe to run in a bounded thread pool beside the
        event loop, so that the async runner accepts it.
        """
        register = partial(self._register, batch_size=batch_size, max_wait_ms=max_wait_ms, offload=offload)
        return register if fn is None else register(fn)

    def _register(self, fn: F, *, batch_size: int | None, max_wait_ms: float | None, offload: bool) -> F:
        # Checked here, so that a bad value fails at import time, where it was written.
        BatchSpec(1 if batch_size is None else batch_size, (max_wait_ms or 0.0) / 1000)
        if self.handler is not None and self.handler is not fn:
            log.warning("@task %s replaces the handler registered before, %s", _name(fn), _name(self.handler))
        self.handler = fn
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.offload = offload
        return fn

    def forget(self) -> None:
        """Let go of the handler and the loader (see ``default_registry``)."""
        self.handler = self.loader = None

    def batch_spec(self) -> BatchSpec | None:
        """How the handler's calls are batched; None when it takes one payload per call."""
        if self.batch_size is None:
            return None
        return BatchSpec(self.batch_size, (self.max_wait_ms or 0.0) / 1000)

    def with_batch_defaults(self, batch_size: int | None, max_wait_ms: float | None) -> Registry:
        """This registry, with batch values the ``@task`` decorator left unset taken from settings (code wins)."""
        if batch_size is None and max_wait_ms is None:
            return self
        configured = copy.copy(self)
        configured.batch_size = self.batch_size if self.batch_size is not None else batch_size
        configured.max_wait_ms = self.max_wait_ms if self.max_wait_ms is not None else max_wait_ms
        return configured

    def load(self, fn: F, /) -> F:
        """Register the function run once per process before serving; its return value is the handler's ``ctx``."""
        self.loader = fn
        return fn

    def bind(self, loop: EventLoopThread | None = None) -> BoundHandler:
        """Run ``@load`` (in this process) and bind its result to the handler.

        An ``async def`` handler or loader runs on ``loop``, or on a loop of its own
        when none is given. Raises :class:`HandlerNotRegistered` without a handler and
        :class:`LoadFailed` when the loader raised.
        """
        if self.handler is None:
            raise HandlerNotRegistered("no task handler registered: decorate your handler function with @task")
        if loop is None and (_is_async(self.handler) or _is_async(self.loader)):
            from runqy.aio import EventLoopThread

            loop = EventLoopThread()
        ctx = None
        if self.loader is not None:
            try:
                ctx = loop.run(self.loader()) if loop is not None and _is_async(self.loader) else self.loader()
            except Exception as exc:
                if loop is not None:
                    loop.close()
                raise LoadFailed(f"@load {_name(self.loader)} failed: {type(exc).__name__}: {exc}") from exc
        pass_ctx = self.loader is not None or _positional_arity(self.handler) >= 2
        return BoundHandler(self.handler, ctx, pass_ctx, loop, self.batch_spec())


class BoundHandler:
    """A handler bound to its ``@load`` context: runs one attempt of a task and maps its outcome."""

    def __init__(
        self,
        fn: Callable[..., Any],
        ctx: Any,
        pass_ctx: bool,
        loop: EventLoopThread | None,
        batch: BatchSpec | None = None,
    ) -> None:
        self.fn = fn
        self.ctx = ctx
        self.pass_ctx = pass_ctx
        self.loop = loop
        self.is_async = _is_async(fn)
        #: Set for a batch handler: its calls take a list of payloads (see :meth:`execute_batch`).
        self.batch = batch
        #: Exceptions answered as retryable (``retry: true``) besides ``RetryableError``.
        self.retry_exceptions: tuple[type[BaseException], ...] = ()

    def execute(self, request: TaskRequest, attempt: int = 1, cancel: Cancellation | None = None) -> TaskResponse:
        """Run a synchronous handler once in the calling thread; never raises."""
        token = _current.set((request, attempt, cancel or _NEVER_CANCELLED))
        try:
            result = self.fn(request.payload, self.ctx) if self.pass_ctx else self.fn(request.payload)
        except BaseException as exc:  # noqa: BLE001 - a SystemExit in a handler must fail the task, not the worker
            return failure_response(request, exc, self.retry_exceptions)
        finally:
            _current.reset(token)
        return new_response((request.task_id, result, None, False))

    async def execute_async(
        self, request: TaskRequest, attempt: int = 1, cancel: Cancellation | None = None
    ) -> TaskResponse:
        """Run an ``async def`` handler once on the worker's loop; never raises except on cancellation."""
        _current.set((request, attempt, cancel or _NEVER_CANCELLED))
        try:
            coro = self.fn(request.payload, self.ctx) if self.pass_ctx else self.fn(request.payload)
            result = await coro
        # Everything but the cancellation: a SystemExit raised on the loop would stop it for every task.
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001 - every handler error is answered
            return failure_response(request, exc, self.retry_exceptions)
        return TaskResponse(request.task_id, result)

    def execute_blocking(self, request: TaskRequest, attempt: int = 1) -> TaskResponse:
        """Run one attempt of either kind of handler and wait for it, without a time limit."""
        if self.loop is not None and self.is_async:
            return self.loop.run(self.execute_async(request, attempt))
        return self.execute(request, attempt)

    def execute_batch(
        self, tasks: list[tuple[TaskRequest, int]], cancel: Cancellation | None = None
    ) -> list[TaskResponse]:
        """Run a synchronous batch handler once over ``tasks`` (each with its attempt number); never raises."""
        token = _current_batch.set((tasks, cancel or _NEVER_CANCELLED))
        try:
            payloads = [request.payload for request, _ in tasks]
            results = self.fn(payloads, self.ctx) if self.pass_ctx else self.fn(payloads)
        except BaseException as exc:  # noqa: BLE001 - as in execute(): the call's tasks fail, not the worker
            return [failure_response(request, exc, self.retry_exceptions) for request, _ in tasks]
        finally:
            _current_batch.reset(token)
        return batch_responses(tasks, results, self.retry_exceptions)

    async def execute_batch_async(
        self, tasks: list[tuple[TaskRequest, int]], cancel: Cancellation | None = None
    ) -> list[TaskResponse]:
        """Run an ``async def`` batch handler once on the worker's loop; never raises except on cancellation."""
        _current_batch.set((tasks, cancel or _NEVER_CANCELLED))
        try:
            payloads = [request.payload for request, _ in tasks]
            coro = self.fn(payloads, self.ctx) if self.pass_ctx else self.fn(payloads)
            results = await coro
        # As in execute_async(): everything but the cancellation, which must reach the loop.
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001 - the call's tasks fail, not the loop
            return [failure_response(request, exc, self.retry_exceptions) for request, _ in tasks]
        return batch_responses(tasks, results, self.retry_exceptions)

    def execute_batch_blocking(self, tasks: list[tuple[TaskRequest, int]]) -> list[TaskResponse]:
        """Run one call of either kind of batch handler and wait for it, without a time limit."""
        if self.loop is not None and self.is_async:
            return self.loop.run(self.execute_batch_async(tasks))
        return self.execute_batch(tasks)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()


def batch_responses(
    tasks: list[tuple[TaskRequest, int]], results: Any, retry_exceptions: tuple[type[BaseException], ...] = ()
) -> list[TaskResponse]:
    """Map a batch handler's returned list to one response per task.

    An exception instance in the list fails only its task; a return value that is not
    a list of the right length fails every task of the call, saying what was expected.
    """
    if not isinstance(results, (list, tuple)) or len(results) != len(tasks):
        got = f"a {type(results).__name__}" + (f" of {len(results)}" if isinstance(results, (list, tuple)) else "")
        why = (
            f"the batch handler returned {got} for {len(tasks)} payload(s); "
            "expected a list with one result per payload, in the order of the payloads"
        )
        return [TaskResponse.failure(request.task_id, why) for request, _ in tasks]
    return [
        failure_response(request, result, retry_exceptions)
        if isinstance(result, BaseException)
        else TaskResponse(request.task_id, result)
        for (request, _), result in zip(tasks, results, strict=True)
    ]


# Shared by every attempt that has no time limit: nothing ever cancels those.
_NEVER_CANCELLED = threading.Event()


def failure_response(
    request: TaskRequest, exc: BaseException, retry_exceptions: tuple[type[BaseException], ...] = ()
) -> TaskResponse:
    """Map a handler's exception to a response: ``RetryableError`` and ``retry_exceptions`` are retryable.

    A ``RetryableError`` is answered with its message; anything else with its traceback.
    """
    if isinstance(exc, RetryableError):
        return TaskResponse.failure(request.task_id, str(exc) or type(exc).__name__, retry=True)
    retry = isinstance(exc, retry_exceptions)
    return TaskResponse.failure(request.task_id, "".join(traceback.format_exception(exc)).rstrip(), retry=retry)


def _is_async(fn: Callable[..., Any] | None) -> bool:
    return fn is not None and inspect.iscoroutinefunction(fn)


def _positional_arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return 2
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


def _name(fn: Callable[..., Any] | None) -> str:
    return getattr(fn, "__qualname__", repr(fn))


default_registry = Registry()
# At exit, the interpreter clears this module only after its last collection of reference cycles,
# and a worker module's globals are in one with its own functions: held here until then, the
# handler would keep them from ever being finalized, and a file the module left open would lose
# what it had not flushed yet.
atexit.register(default_registry.forget)
#: Register the worker's task handler (``@task``), as in runqy-python.
task = default_registry.task
#: Register the worker's loader (``@load``), as in runqy-python.
load = default_registry.load
