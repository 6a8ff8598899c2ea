"""The behaviours worker (tests/behaviours.py) with ``async def`` handler and loader, for the async runner.

The same ops with the same answers; waiting is ``await asyncio.sleep``, as a handler
that calls a service waits, so a stuck task holds no thread and a timed-out one can be
cancelled.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from runqy import RetryableError, current_task, load, task

# As in behaviours.py (not imported from there: that would register its handler too).
STUCK_S = 10.0
RENDEZVOUS_TIMEOUT_S = 5.0
LOADS_DIR_VAR = "BEHAVIOURS_LOADS_DIR"
LOAD_GREETING = "behaviours: loaded"
_POLL_S = 0.005


@load
async def setup() -> dict[str, Any]:
    token = uuid.uuid4().hex
    print(LOAD_GREETING, flush=True)
    if loads_dir := os.environ.get(LOADS_DIR_VAR):
        (Path(loads_dir) / token).touch()
    # The loop is the runner's: every task must see this very object.
    return {"token": token, "loop": asyncio.get_running_loop()}


@task
async def handle(payload: Any, ctx: dict[str, Any]) -> Any:
    op = payload.get("op", "echo") if isinstance(payload, dict) else "echo"
    return await _OPS[op](payload, ctx)


async def _echo(payload: Any, ctx: dict[str, Any]) -> Any:
    return payload


async def _fail(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    raise ValueError(payload.get("message", "asked to fail"))


async def _retryable(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    raise RetryableError(payload.get("message", "asked to fail, retryably"))


async def _not_json(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    return {"a set": {1, 2}}


async def _exit(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    raise SystemExit(3)


async def _context(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    info = current_task()
    return {
        "token": ctx["token"],
        "same_loop": ctx["loop"] is asyncio.get_running_loop(),
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "task_id": info.task_id,
        "attempt": info.attempt,
    }


async def _stuck(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Stands for a call that never returns; ``cooperative`` ones also stop once flagged cancelled."""
    deadline = time.monotonic() + payload.get("seconds", STUCK_S)
    cooperative = payload.get("cooperative", False)
    while time.monotonic() < deadline:
        if cooperative and current_task().cancelled:
            return "stopped after cancellation"
        await asyncio.sleep(_POLL_S)
    return "finished after all"


async def _stuck_first(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    attempt = current_task().attempt
    if attempt == 1:
        await _stuck({"seconds": payload.get("seconds", STUCK_S)}, ctx)
    return {"attempt": attempt}


async def _flaky(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    attempt = current_task().attempt
    if attempt < payload["succeed_on"]:
        raise RetryableError(f"attempt {attempt} failed on purpose")
    return {"attempt": attempt}


async def _rendezvous(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    folder = Path(payload["dir"])
    (folder / current_task().task_id).touch()
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
    while len(os.listdir(folder)) < payload["parties"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(os.listdir(folder))} of {payload['parties']} tasks ran at once")
        await asyncio.sleep(_POLL_S)
    return "met"


async def _shell(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Run ``command`` in a shell, which inherits fd 1; returns its exit status."""
    shell = await asyncio.create_subprocess_shell(payload["command"])
    return await shell.wait()


async def _work(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    if "dir" in payload:
        (Path(payload["dir"]) / current_task().task_id).touch()
    await asyncio.sleep(payload.get("seconds", 0.0))
    return {"worked_s": payload.get("seconds", 0.0)}


_OPS = {
    "echo": _echo,
    "fail": _fail,
    "retryable": _retryable,
    "not_json": _not_json,
    "exit": _exit,
    "context": _context,
    "stuck": _stuck,
    "stuck_first": _stuck_first,
    "flaky": _flaky,
    "rendezvous": _rendezvous,
    "work": _work,
    "shell": _shell,
}
