"""The worker the async-runner benchmarks serve: a no-op, an awaited sleep (a service call), or a hanging attempt."""

from __future__ import annotations

import asyncio
from typing import Any

from runqy import current_task, task


@task
async def handle(payload: Any) -> Any:
    if isinstance(payload, dict) and payload.get("hang_first") and current_task().attempt == 1:
        await asyncio.sleep(600)  # a call that never returns; only the task timeout ends it
    seconds = payload.get("sleep_s") if isinstance(payload, dict) else None
    if seconds:
        await asyncio.sleep(seconds)
    return None
