"""Handlers for the runqy bench tests: sleep (waits, GIL released) or spin (holds the GIL; reports where and when)."""

import os
import time

from runqy import run, task


@task
def handle(payload):
    if payload["kind"] == "sleep":
        time.sleep(payload["s"])
        return None
    started = time.monotonic()  # one clock for every process of the machine
    x = 0
    for i in range(payload["n"]):  # fixed work, not a time-based spin: parallel runs must really share cores
        x += i * i
    return {"pid": os.getpid(), "started": started, "ended": time.monotonic()}


if __name__ == "__main__":
    run()
