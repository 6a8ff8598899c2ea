"""The batch behaviours worker (tests/batch_behaviours.py) as an ``async def`` batch handler, for the async runner.

The same ops with the same answers; a "stuck" call awaits, so a timeout can cancel it,
and a "stuck_first" item makes only its first attempt's call stuck.
Cancelled calls are recorded by task id in ``cancelled``, for tests in this process; a
payload with a ``dir`` marks there (a file named by its task id) that its call started.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from batch_items import BATCH_SIZE, STUCK_S, ops_of, results_of

from runqy import current_batch, task

#: Task ids of the calls cancelled while they awaited (in-process tests read it).
cancelled: list[list[str]] = []


@task(batch_size=BATCH_SIZE)
async def handle(payloads: list[Any]) -> Any:
    ops = ops_of(payloads)
    if "raise" in ops:
        raise ValueError("the whole call failed")
    batch = current_batch()
    for payload, info in zip(payloads, batch, strict=True):
        if isinstance(payload, dict) and "dir" in payload:  # marks that the task's call has started
            Path(payload["dir"], info.task_id).touch()
    # "stuck_first": stuck on its first attempt only, so that its retry can succeed.
    if "stuck" in ops or any(op == "stuck_first" and info.attempt == 1 for op, info in zip(ops, batch, strict=True)):
        try:
            await asyncio.sleep(STUCK_S)
        except asyncio.CancelledError:
            cancelled.append([info.task_id for info in batch])
            raise
    return results_of(payloads, ops, batch)
