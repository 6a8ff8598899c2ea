"""A batch handler of deliberately (mis)behaving items, driven by the batch contract tests.

Each payload's ``op`` picks what becomes of its item; every successful item reports
the task ids of the call it ran in, so a test can see how calls were formed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from runqy import RetryableError, RunqyError, current_batch, current_task, task

#: Most items one call takes here.
BATCH_SIZE = 8
#: How long a "stuck" call blocks at most: far longer than any test waits for an answer.
STUCK_S = 10.0


@task(batch_size=BATCH_SIZE)
def handle(payloads: list[Any]) -> Any:
    ops = [payload.get("op", "echo") if isinstance(payload, dict) else "echo" for payload in payloads]
    if "exit" in ops:
        os._exit(3)  # the whole child process dies (on in-process runners: never sent there)
    if "raise" in ops:
        raise ValueError("the whole call failed")
    if "stuck" in ops:
        time.sleep(STUCK_S)
    batch = current_batch()
    call = [info.task_id for info in batch]
    results = [_item(payload, op, info.attempt, call) for payload, op, info in zip(payloads, ops, batch, strict=True)]
    if "short" in ops:
        results.pop()
    return results


def _item(payload: Any, op: str, attempt: int, call: list[str]) -> Any:
    if op == "fail":
        return ValueError(f"bad item {payload.get('n')}")
    if op == "retryable":
        return RetryableError("try later")
    if op == "not_json":
        return {"a set": {1, 2}}
    if op == "current_task":
        try:
            current_task()
        except RunqyError as exc:
            return {"current_task": str(exc)}
    return {"payload": payload, "call": call, "attempt": attempt, "pid": os.getpid()}
