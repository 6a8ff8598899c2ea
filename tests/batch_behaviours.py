"""A batch handler of deliberately (mis)behaving items, driven by the batch contract tests.

Each payload's ``op`` picks what becomes of its item (see :mod:`batch_items`); every
successful item reports the task ids of the call it ran in, so a test can see how
calls were formed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from batch_items import BATCH_SIZE, STUCK_S, ops_of, results_of

from runqy import current_batch, task


@task(batch_size=BATCH_SIZE)
def handle(payloads: list[Any]) -> Any:
    ops = ops_of(payloads)
    if "exit" in ops:
        os._exit(3)  # the whole child process dies (on in-process runners: never sent there)
    if "raise" in ops:
        raise ValueError("the whole call failed")
    if "stuck" in ops:
        time.sleep(STUCK_S)
    return results_of(payloads, ops, current_batch())
