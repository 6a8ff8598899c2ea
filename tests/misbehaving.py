"""Deliberately misbehaving task handlers, for the tests of the process and hybrid runners.

The handler reads ``payload["do"]`` and misbehaves accordingly; the registries at the
bottom are what the tests start runners with. Everything is at module level, because
child processes import this module by name to find the handler.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runqy import RetryableError, current_task
from runqy.app import Registry

#: Long enough to stand for "never finishes" under any test deadline.
FOREVER_S = 600.0
#: The memory balloon stops growing here even if nobody stops it, so a broken limit cannot take the machine down.
BALLOON_CAP_MB = 1024


def handle(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Do what ``payload["do"]`` says; ``ctx`` comes from :func:`setup`."""
    action = payload.get("do", "echo")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return ACTIONS[action](payload, ctx)


def _echo(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    return {"echo": payload.get("value"), "pid": os.getpid(), "attempt": current_task().attempt}


def _exit(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    os._exit(int(payload.get("code", 1)))


def _signal(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    os.kill(os.getpid(), int(payload.get("signal", 9)))


def _segfault(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    import ctypes

    return ctypes.string_at(0)


def _exit_first_attempt(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    if current_task().attempt == 1:
        os._exit(3)
    return {"attempt": current_task().attempt}


def _hang(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    _mark(payload)
    time.sleep(FOREVER_S)


def _hang_with_grandchild(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    sleeper = subprocess.Popen(["sleep", str(int(FOREVER_S))])
    _mark(payload, str(sleeper.pid))
    time.sleep(FOREVER_S)


def _hang_first_attempt(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    if current_task().attempt == 1:
        _mark(payload)
        time.sleep(FOREVER_S)
    return {"attempt": current_task().attempt, "pid": os.getpid()}


def _noise(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    os.write(1, b"noise from fd 1\n")  # as C code printing to stdout does
    print("noise from print()")
    sys.stdout.flush()
    return "quiet"


def _huge(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    return "x" * (int(payload.get("mb", 11)) * 2**20)


def _unpicklable(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    return threading.Lock()


def _retryable(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    if current_task().attempt < int(payload.get("succeed_on", 2)):
        raise RetryableError(f"attempt {current_task().attempt} asked to be retried")
    return {"attempt": current_task().attempt}


def _balloon(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    _mark(payload)
    chunks = []
    for _ in range(BALLOON_CAP_MB // 16):
        chunks.append(bytearray(16 * 2**20))  # bytearray pages are written, so they count as resident
        time.sleep(0.01)
    time.sleep(FOREVER_S)


def _barrier(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Wait until ``parties`` tasks are inside at once (files in a folder); proves they run concurrently."""
    folder = Path(payload["dir"])
    (folder / f"{os.getpid()}-{threading.get_ident()}").touch()
    deadline = time.monotonic() + float(payload.get("timeout_s", 20))
    while len(list(folder.iterdir())) < int(payload["parties"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the other tasks never arrived: they do not run at the same time")
        time.sleep(0.005)
    return {"pid": os.getpid(), "thread": threading.get_ident()}


def _gil_hog(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Catastrophic regex backtracking: C code that never releases the GIL, for hours."""
    return bool(re.match(r"(a+)+$", "a" * 40 + "b"))


_LEAKED: list[bytearray] = []


def _leak(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Keep ``mb`` more MiB for the life of the process, as a leaking C extension would."""
    _LEAKED.append(bytearray(int(payload.get("mb", 64)) * 2**20))
    return os.getpid()


def _spin(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Hold the GIL, computing, for ``ms`` milliseconds."""
    end = time.perf_counter() + float(payload.get("ms", 20)) / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def _wait_for_file(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Mark the start, then run until the test creates ``file``: a task that is still running while the test acts."""
    _mark(payload)
    path, deadline = Path(payload["file"]), time.monotonic() + 20
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return os.getpid()


def _sleep(payload: dict[str, Any], ctx: dict[str, Any]) -> Any:
    time.sleep(float(payload.get("ms", 20)) / 1000)


ACTIONS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Any]] = {
    "echo": _echo,
    "pid": lambda payload, ctx: os.getpid(),
    "loaded_in": lambda payload, ctx: ctx["pid"],
    "noop": lambda payload, ctx: None,
    "exit": _exit,
    "signal": _signal,
    "segfault": _segfault,
    "exit_first_attempt": _exit_first_attempt,
    "hang": _hang,
    "hang_with_grandchild": _hang_with_grandchild,
    "hang_first_attempt": _hang_first_attempt,
    "noise": _noise,
    "huge": _huge,
    "unpicklable": _unpicklable,
    "retryable": _retryable,
    "balloon": _balloon,
    "barrier": _barrier,
    "leak": _leak,
    "gil_hog": _gil_hog,
    "spin": _spin,
    "sleep": _sleep,
    "wait_for_file": _wait_for_file,
}


def setup() -> dict[str, Any]:
    """The @load of these handlers: records where it ran."""
    return {"pid": os.getpid()}


def failing_setup() -> dict[str, Any]:
    raise RuntimeError("the model file is missing")


def _mark(payload: dict[str, Any], text: str = "") -> None:
    """Tell the test that the task is running (and what it started), through a file it names."""
    path = payload.get("mark")
    if path:
        Path(path).write_text(text or str(os.getpid()))


registry = Registry()
registry.task(handle)
registry.load(setup)

broken_registry = Registry()
broken_registry.task(handle)
broken_registry.load(failing_setup)
