"""Deliberately misbehaving task handlers, for the tests of the process and hybrid runners.

The handler reads ``payload["do"]`` and misbehaves accordingly; the registries at the
bottom are what the tests start runners with. Everything is at module level, because
child processes import this module by name to find the handler.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
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
    if action == "echo":
        return {"echo": payload.get("value"), "pid": os.getpid(), "attempt": current_task().attempt}
    if action == "pid":
        return os.getpid()
    if action == "exit":
        os._exit(int(payload.get("code", 1)))
    if action == "signal":
        os.kill(os.getpid(), int(payload.get("signal", 9)))
    if action == "segfault":
        import ctypes

        ctypes.string_at(0)
    if action == "exit_first_attempt":
        if current_task().attempt == 1:
            os._exit(3)
        return {"attempt": current_task().attempt}
    if action == "hang":
        _mark(payload)
        time.sleep(FOREVER_S)
    if action == "hang_with_grandchild":
        sleeper = subprocess.Popen(["sleep", str(int(FOREVER_S))])
        _mark(payload, str(sleeper.pid))
        time.sleep(FOREVER_S)
    if action == "hang_first_attempt":
        if current_task().attempt == 1:
            _mark(payload)
            time.sleep(FOREVER_S)
        return {"attempt": current_task().attempt, "pid": os.getpid()}
    if action == "noise":
        os.write(1, b"noise from fd 1\n")
        print("noise from print()")
        sys.stdout.flush()
        return "quiet"
    if action == "huge":
        return "x" * (int(payload.get("mb", 11)) * 2**20)
    if action == "unpicklable":
        return threading.Lock()
    if action == "balloon":
        _balloon(payload)
    if action == "retryable":
        if current_task().attempt < int(payload.get("succeed_on", 2)):
            raise RetryableError(f"attempt {current_task().attempt} asked to be retried")
        return {"attempt": current_task().attempt}
    if action == "barrier":
        return _barrier(payload)
    if action == "loaded_in":
        return ctx["pid"]
    raise ValueError(f"unknown action {action!r}")


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


def _balloon(payload: dict[str, Any]) -> None:
    _mark(payload)
    chunks = []
    for _ in range(BALLOON_CAP_MB // 16):
        chunks.append(bytearray(16 * 2**20))  # bytearray pages are written, so they count as resident
        time.sleep(0.01)
    time.sleep(FOREVER_S)


def _barrier(payload: dict[str, Any]) -> dict[str, Any]:
    """Wait until ``parties`` tasks are inside at once (files in a folder); proves they run concurrently."""
    folder = Path(payload["dir"])
    (folder / f"{os.getpid()}-{threading.get_ident()}").touch()
    deadline = time.monotonic() + float(payload.get("timeout_s", 20))
    while len(list(folder.iterdir())) < int(payload["parties"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the other tasks never arrived: they do not run at the same time")
        time.sleep(0.005)
    return {"pid": os.getpid(), "thread": threading.get_ident()}


registry = Registry()
registry.task(handle)
registry.load(setup)

broken_registry = Registry()
broken_registry.task(handle)
broken_registry.load(failing_setup)
