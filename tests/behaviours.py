"""A worker of deliberately (mis)behaving tasks, driven by the contract tests.

The payload's ``op`` picks the behaviour. It is served as a real worker process
(``runqy run tests/behaviours.py``) and also registered in-process; everything
that synchronises tasks goes through files, so it works in child processes too.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from runqy import RetryableError, current_task, load, task

#: How long a "stuck" task blocks at most: far longer than any test waits for an answer.
STUCK_S = 10.0
#: A rendezvous that is not met within this fails the task instead of hanging the test.
RENDEZVOUS_TIMEOUT_S = 5.0
#: When set, every ``@load`` leaves a file in this folder: tests wait on it for a replacement child to be ready.
LOADS_DIR_VAR = "BEHAVIOURS_LOADS_DIR"
#: What every ``@load`` prints to stdout, as chatty model loaders do: it must never reach the protocol stream.
LOAD_GREETING = "behaviours: loaded"
_POLL_S = 0.005


@load
def setup() -> dict[str, Any]:
    # A fresh token per load: tasks that see the same token share one context object.
    token = uuid.uuid4().hex
    print(LOAD_GREETING, flush=True)
    if loads_dir := os.environ.get(LOADS_DIR_VAR):
        (Path(loads_dir) / token).touch()
    return {"token": token}


@task
def handle(payload: Any, ctx: dict[str, Any]) -> Any:
    op = payload.get("op", "echo") if isinstance(payload, dict) else "echo"
    return _OPS[op](payload, ctx)


def _echo(payload: Any, ctx: dict[str, Any]) -> Any:
    return payload


def _fail(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    raise ValueError(payload.get("message", "asked to fail"))


def _retryable(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    raise RetryableError(payload.get("message", "asked to fail, retryably"))


def _not_json(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    return {"a set": {1, 2}}


def _exit(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    raise SystemExit(3)


def _context(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    info = current_task()
    return {
        "token": ctx["token"],
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "task_id": info.task_id,
        "attempt": info.attempt,
    }


def _stuck(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Stands for a task that never ends; ``cooperative`` ones stop once cancelled."""
    deadline = time.monotonic() + payload.get("seconds", STUCK_S)
    cooperative = payload.get("cooperative", False)
    while time.monotonic() < deadline:
        if cooperative and current_task().cancelled:
            return "stopped after cancellation"
        time.sleep(_POLL_S)
    return "finished after all"


def _stuck_first(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Attempt 1 is stuck (not cooperative); every later attempt answers at once."""
    attempt = current_task().attempt
    if attempt == 1:
        _stuck({"seconds": payload.get("seconds", STUCK_S)}, ctx)
    return {"attempt": attempt}


def _flaky(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Fails retryably until attempt ``succeed_on``."""
    attempt = current_task().attempt
    if attempt < payload["succeed_on"]:
        raise RetryableError(f"attempt {attempt} failed on purpose")
    return {"attempt": attempt}


def _rendezvous(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Mark arrival in ``dir``, then wait until ``parties`` tasks arrived: proves they ran at the same time."""
    folder = Path(payload["dir"])
    (folder / current_task().task_id).touch()
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
    while len(os.listdir(folder)) < payload["parties"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(os.listdir(folder))} of {payload['parties']} tasks ran at once")
        time.sleep(_POLL_S)
    return "met"


def _shell(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Run ``command`` in a shell, which inherits fd 1; returns its exit status."""
    return os.system(payload["command"])


def _work(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Mark the start in ``dir`` (if given), then work for ``seconds``."""
    if "dir" in payload:
        (Path(payload["dir"]) / current_task().task_id).touch()
    time.sleep(payload.get("seconds", 0.0))
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
