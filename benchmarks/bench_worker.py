"""The worker the thread-runner benchmarks serve: a no-op, or a sleep standing for I/O-bound work."""

from __future__ import annotations

import time
from typing import Any

from runqy import task


@task
def handle(payload: Any) -> Any:
    seconds = payload.get("sleep_s") if isinstance(payload, dict) else None
    if seconds:
        time.sleep(seconds)
    return None
