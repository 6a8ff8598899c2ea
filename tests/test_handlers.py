"""How handlers are called: ctx passing, async handlers, current_task(), exceptions (in-process, real threads)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from runqy import RetryableError, TaskInfo, current_task
from runqy.app import Registry
from runqy.errors import HandlerNotRegistered, LoadFailed, RunqyError
from runqy.protocol import TaskRequest
from runqy.runners.sequential import SequentialRunner

REQUEST = TaskRequest("t-1", {"n": 1}, "inference", "inference.high", 1, 3)


def run_one(registry: Registry, request: TaskRequest = REQUEST) -> Any:
    with SequentialRunner() as runner:
        runner.start(registry)
        return runner.run_task(request)


def test_ctx_is_passed_when_a_loader_is_registered_even_if_it_returned_none() -> None:
    registry = Registry()
    registry.load(lambda: None)
    registry.task(lambda payload, ctx: {"ctx": ctx})
    assert run_one(registry).result == {"ctx": None}


def test_a_two_parameter_handler_gets_ctx_none_without_a_loader() -> None:
    registry = Registry()
    registry.task(lambda payload, ctx: [payload, ctx])
    assert run_one(registry).result == [{"n": 1}, None]


def test_a_one_parameter_handler_gets_the_payload_only() -> None:
    registry = Registry()
    registry.load(lambda: {"model": 1})

    @registry.task
    def handle(payload: Any, ctx: Any = None) -> Any:
        return ctx

    assert run_one(registry).result == {"model": 1}


def test_async_handlers_and_async_loaders_share_one_event_loop() -> None:
    registry = Registry()

    @registry.load
    async def setup() -> dict[str, Any]:
        return {"loop": asyncio.get_running_loop()}

    @registry.task
    async def handle(payload: Any, ctx: dict[str, Any]) -> bool:
        await asyncio.sleep(0)
        return asyncio.get_running_loop() is ctx["loop"]

    assert run_one(registry).result is True


def test_current_task_describes_the_running_task_in_the_handler_thread() -> None:
    registry = Registry()
    seen: list[tuple[TaskInfo, str]] = []

    @registry.task
    def handle(payload: Any) -> str:
        seen.append((current_task(), threading.current_thread().name))
        return "ok"

    assert run_one(registry).result == "ok"
    [(info, thread_name)] = seen
    assert (info.task_id, info.type, info.queue, info.retry_count, info.max_retry) == (
        "t-1",
        "inference",
        "inference.high",
        1,
        3,
    )
    assert info.attempt == 1 and info.cancelled is False
    assert thread_name != threading.current_thread().name


def test_current_task_outside_a_handler_is_an_error() -> None:
    with pytest.raises(RunqyError, match="only available while a @task handler runs"):
        current_task()


def test_retryable_error_and_system_exit_are_mapped_not_fatal() -> None:
    registry = Registry()

    @registry.task
    def handle(payload: str) -> None:
        if payload == "retry":
            raise RetryableError("later")
        raise SystemExit(3)

    retry = run_one(registry, TaskRequest("a", "retry"))
    assert (retry.error, retry.retry) == ("later", True)
    exited = run_one(registry, TaskRequest("b", "exit"))
    assert "SystemExit: 3" in (exited.error or "") and exited.retry is False


def test_task_decorator_works_with_and_without_parentheses() -> None:
    registry = Registry()

    @registry.task()
    def handle(payload: Any) -> Any:
        return payload

    assert registry.handler is handle


def test_no_handler_and_failing_loader_are_reported() -> None:
    with pytest.raises(HandlerNotRegistered, match="@task"):
        Registry().bind()
    registry = Registry()
    registry.task(lambda payload: payload)

    @registry.load
    def setup() -> None:
        raise OSError("weights not found")

    with pytest.raises(LoadFailed, match="weights not found"):
        registry.bind()
