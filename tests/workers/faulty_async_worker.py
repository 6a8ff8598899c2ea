"""The faulty worker (faulty_worker.py) as an ``async def`` handler, for the async runner: the same misdeeds.

Waiting is ``await asyncio.sleep``, so a hanging task holds no thread and its timeout cancels it.
"""

import asyncio
import os
import sys

from runqy import run, task


@task
async def handle(payload):
    kind = payload.get("kind", "echo") if isinstance(payload, dict) else "echo"
    if kind == "crash":
        os._exit(3)  # no cleanup, no answer: as a segfaulting C extension would
    if kind == "hang":
        await asyncio.sleep(600)  # stands for a call that never returns; the task timeout must end it
    if kind == "raise":
        raise ValueError(f"task {payload['n']} asked to fail")
    if kind == "fd1":
        os.write(1, b"noise written straight to fd 1\n")  # what C code and subprocesses do
    if kind == "sleep":
        await asyncio.sleep(payload["s"])
    if kind == "stderr":
        print(f"started {payload['n']}", file=sys.stderr, flush=True)
    return payload if kind == "echo" else {"n": payload.get("n")}


if __name__ == "__main__":
    run()
