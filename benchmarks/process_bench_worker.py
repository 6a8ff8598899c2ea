"""The worker the process-runner benchmark drives: CPU spin, sleep, no-op and hang tasks, no heavy imports."""

from __future__ import annotations

import os
import time
from typing import Any

from runqy import task


@task
def handle(payload: dict[str, Any]) -> Any:
    kind = payload.get("do", "noop")
    if kind == "spin":
        # Pure-Python CPU work that holds the GIL for the whole time.
        end = time.perf_counter() + payload["ms"] / 1000
        n = 0
        while time.perf_counter() < end:
            n += 1
        return n
    if kind == "sleep":
        time.sleep(payload["ms"] / 1000)
    elif kind == "hang":
        time.sleep(600)
    elif kind == "pid":
        return os.getpid()
    return None
