"""On the sequential runner, ``@load`` and every task run on one thread for the life of the worker, as in 0.2.2.

A real worker process over real pipes. Its ``@load`` opens an sqlite3 connection with
the default ``check_same_thread=True``: sqlite3 refuses any use from another thread,
so every task that succeeds ran on the thread that opened it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WorkerFactory

from runqy.local.driver import LocalWorker, make_request

SQLITE_WORKER = """
import sqlite3, sys, threading
from runqy import load, task, run

@load
def setup():
    db = sqlite3.connect(":memory:")  # check_same_thread=True: usable from this thread only
    db.execute("create table seen (n integer)")
    return db

@task
def handle(payload, db):
    if "fifo" in payload:
        print(f"holding {payload['n']}", file=sys.stderr, flush=True)
        with open(payload["fifo"]) as fifo:  # blocks until the test opens the FIFO for writing
            fifo.read()
    db.execute("insert into seen values (?)", (payload["n"],))
    return db.execute("select count(*) from seen").fetchone()[0]

run()
"""


@pytest.fixture
def sqlite_worker(write_worker: Callable[[str], Path]) -> Path:
    return write_worker(SQLITE_WORKER)


def counts(worker: LocalWorker, payloads: list[dict[str, object]]) -> list[object]:
    """Send every payload at once and return the answers' results in order (failing on any error)."""
    pending = [worker.submit(make_request(payload)) for payload in payloads]
    for task in pending:
        assert worker.wait_for(task, timeout_s=30)
        assert task.response is not None and task.response["error"] is None, task.response
    return [task.response["result"] for task in pending if task.response]


def test_a_connection_made_in_load_serves_100_tasks(sqlite_worker: Path, start_worker: WorkerFactory) -> None:
    worker = start_worker(sqlite_worker)
    assert counts(worker, [{"n": n} for n in range(100)]) == list(range(1, 101))
    worker.close_stdin()
    assert worker.wait(timeout_s=10) == 0


def test_the_load_thread_runs_tasks_read_while_a_long_task_held_it(
    sqlite_worker: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    worker = start_worker(sqlite_worker, RUNQY_LOG_LEVEL="DEBUG")
    held = worker.submit(make_request({"n": 0, "fifo": str(fifo)}))
    worker.wait_for_stderr("holding 0")
    worker.wait_for_stderr("another thread reads on")
    # Read by the other thread while task 0 holds the load thread; run on the load thread after it.
    behind = [worker.submit(make_request({"n": n})) for n in range(1, 50)]
    bad = worker.submit({"task_id": "bad-line", "payload": None, "retry_count": "zero"})
    assert worker.wait_for(bad, timeout_s=10)
    with open(fifo, "w") as writer:
        writer.write("go")
    for task in [held, *behind]:
        assert worker.wait_for(task, timeout_s=30)
    assert [task.response["result"] for task in [held, *behind] if task.response] == list(range(1, 51))
    # Reading came back to the load thread: more tasks run there, and an idle SIGTERM still exits at once.
    assert counts(worker, [{"n": n} for n in range(50, 100)]) == list(range(51, 101))
    sent = time.monotonic()
    worker.terminate()
    assert worker.wait(timeout_s=5) == 0
    assert time.monotonic() - sent < 1.0
