"""The built-in example worker: counts the words of a text, using a "model" loaded once.

Run it as the Go worker would, fed by runqy's local driver::

    runqy local runqy.examples.echo --generate 200 --concurrency 8
"""

from __future__ import annotations

import time
from typing import Any

from runqy import RetryableError, current_task, load, run, task


@load
def setup() -> dict[str, Any]:
    # Stands for loading a model: done once per process, before the ready signal.
    return {"stopwords": {"a", "an", "the", "of", "and"}}


@task
def handle(payload: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    payload = payload if isinstance(payload, dict) else {"text": str(payload)}
    if payload.get("fail") == "retry":
        raise RetryableError("asked to fail with a retryable error")
    if payload.get("fail"):
        raise ValueError("asked to fail")
    time.sleep(float(payload.get("sleep_s", 0)))
    words = [w for w in str(payload.get("text", "")).lower().split() if w not in ctx["stopwords"]]
    info = current_task()
    return {"task_id": info.task_id, "words": len(words), "attempt": info.attempt}


if __name__ == "__main__":
    run()
