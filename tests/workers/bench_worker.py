"""Handlers for the runqy bench tests: sleep (waits, GIL released) or spin (pure Python, holds the GIL)."""

import time

from runqy import run, task


@task
def handle(payload):
    if payload["kind"] == "sleep":
        time.sleep(payload["s"])
    else:
        x = 0
        for i in range(payload["n"]):  # fixed work, not a time-based spin: parallel runs must really share cores
            x += i * i
    return None


if __name__ == "__main__":
    run()
