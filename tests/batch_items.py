"""What becomes of each item of a batch call in the batch behaviours workers (sync and async alike).

Kept apart from the handlers, so that the async twin can share it without registering
the sync handler on import.
"""

from __future__ import annotations

import os
from typing import Any

from runqy import RetryableError, RunqyError, TaskInfo, current_task

#: Most items one call takes in the batch behaviours workers.
BATCH_SIZE = 8
#: How long a "stuck" call blocks at most: far longer than any test waits for an answer.
STUCK_S = 10.0


def ops_of(payloads: list[Any]) -> list[str]:
    """Each payload's ``op`` (``echo`` when it names none)."""
    return [payload.get("op", "echo") if isinstance(payload, dict) else "echo" for payload in payloads]


def results_of(payloads: list[Any], ops: list[str], batch: list[TaskInfo]) -> list[Any]:
    """One result per item; every successful one reports the task ids of its call."""
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
