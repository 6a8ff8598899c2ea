"""Deliberately misbehaving tasks for the fault and load tests: the payload's "kind" picks the misdeed.

Started by file path, so that a process runner's children import it by name again.
"""

import os
import sys
import time

from runqy import run, task


@task
def handle(payload):
    kind = payload.get("kind", "echo") if isinstance(payload, dict) else "echo"
    if kind == "crash":
        os._exit(3)  # no cleanup, no answer: as a segfaulting C extension would
    if kind == "hang":
        time.sleep(600)  # stands for a task that never ends; the task timeout must end it
    if kind == "raise":
        raise ValueError(f"task {payload['n']} asked to fail")
    if kind == "fd1":
        os.write(1, b"noise written straight to fd 1\n")  # what C code and subprocesses do
    if kind == "sleep":
        time.sleep(payload["s"])
    if kind == "stderr":
        print(f"started {payload['n']}", file=sys.stderr, flush=True)
    return payload if kind == "echo" else {"n": payload.get("n")}


if __name__ == "__main__":
    run()
