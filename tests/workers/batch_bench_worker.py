"""A batch handler for the runqy bench tests: one call of up to 8 payloads sleeps as long as one payload would."""

import time

from runqy import run, task


@task(batch_size=8)
def handle(payloads):
    time.sleep(payloads[0]["s"])
    return [None] * len(payloads)


if __name__ == "__main__":
    run()
