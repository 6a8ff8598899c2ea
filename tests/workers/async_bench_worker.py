"""The bench worker's sleep as an ``async def`` handler: a call to a service that answers after ``s`` seconds."""

import asyncio

from runqy import run, task


@task
async def handle(payload):
    await asyncio.sleep(payload["s"])
    return None


if __name__ == "__main__":
    run()
