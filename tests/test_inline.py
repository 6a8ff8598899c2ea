"""The sequential runner's tasks run in the reading thread, which never keeps stdin unread behind a long task.

Real worker processes over real pipes; a task is held by a FIFO that the test opens
to let it go, so nothing waits on a clock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WorkerFactory

from runqy.local.driver import LocalWorker, make_request

HELD_WORKER = """
import os, sys
from runqy import task, run

@task
def handle(payload):
    log = os.open(payload["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(log, f"start {payload['n']}\\n".encode())
    if "fifo" in payload:
        print(f"holding {payload['n']}", file=sys.stderr, flush=True)
        with open(payload["fifo"]) as fifo:  # blocks until the test opens the FIFO for writing
            fifo.read()
    os.write(log, f"end {payload['n']}\\n".encode())
    os.close(log)
    return payload["n"]

run()
"""


@pytest.fixture
def held(tmp_path: Path, write_worker: Callable[[str], Path]) -> tuple[Path, Path, Path]:
    """The worker script, the FIFO that holds a task, and the log of task starts and ends."""
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    return write_worker(HELD_WORKER), fifo, tmp_path / "log"


def start(script: Path, start_worker: WorkerFactory) -> LocalWorker:
    """The worker, logging when a held task makes another thread read on."""
    return start_worker(script, RUNQY_LOG_LEVEL="DEBUG")


def wait_held_and_handed_over(worker: LocalWorker, n: int) -> None:
    worker.wait_for_stderr(f"holding {n}")
    worker.wait_for_stderr("another thread reads on")


def release(fifo: Path) -> None:
    with open(fifo, "w") as writer:
        writer.write("go")


def test_stdin_is_read_while_a_long_task_runs(held: tuple[Path, Path, Path], start_worker: WorkerFactory) -> None:
    script, fifo, log = held
    worker = start(script, start_worker)
    first = worker.submit(make_request({"n": 0, "log": str(log), "fifo": str(fifo)}))
    wait_held_and_handed_over(worker, 0)
    # Only a thread still reading stdin can answer this while task 0 holds the runner.
    bad = worker.submit({"task_id": "bad-line", "payload": None, "retry_count": "zero"})
    assert worker.wait_for(bad, timeout_s=10)
    assert bad.response is not None and "retry_count must be an integer" in bad.response["error"]
    assert first.response is None
    release(fifo)
    assert worker.wait_for(first, timeout_s=10)
    assert first.response is not None and first.response["result"] == 0


def test_tasks_read_behind_a_long_one_run_after_it_one_at_a_time_in_order(
    held: tuple[Path, Path, Path], start_worker: WorkerFactory
) -> None:
    script, fifo, log = held
    worker = start(script, start_worker)
    pending = [worker.submit(make_request({"n": 0, "log": str(log), "fifo": str(fifo)}))]
    wait_held_and_handed_over(worker, 0)
    pending += [worker.submit(make_request({"n": n, "log": str(log)})) for n in range(1, 21)]
    release(fifo)
    for task in pending:
        assert worker.wait_for(task, timeout_s=10)
    assert [task.response["result"] for task in pending if task.response] == list(range(21))
    expected = [f"{what} {n}" for n in range(21) for what in ("start", "end")]
    assert log.read_text().splitlines() == expected
    worker.close_stdin()
    assert worker.wait(timeout_s=10) == 0


def test_eof_read_by_the_new_reader_still_drains_the_long_task(
    held: tuple[Path, Path, Path], start_worker: WorkerFactory
) -> None:
    script, fifo, log = held
    worker = start(script, start_worker)
    first = worker.submit(make_request({"n": 0, "log": str(log), "fifo": str(fifo)}))
    second = worker.submit(make_request({"n": 1, "log": str(log)}))
    wait_held_and_handed_over(worker, 0)
    worker.close_stdin()
    release(fifo)
    assert worker.wait(timeout_s=10) == 0
    assert first.response is not None and second.response is not None
    assert (first.response["result"], second.response["result"]) == (0, 1)


def test_a_long_last_line_without_newline_at_eof_runs_once(
    held: tuple[Path, Path, Path], start_worker: WorkerFactory
) -> None:
    script, fifo, log = held
    worker = start(script, start_worker)
    request = make_request({"n": 7, "log": str(log), "fifo": str(fifo)})
    worker.send_line(json.dumps(request).encode())  # no newline: only EOF ends it
    worker.close_stdin()
    wait_held_and_handed_over(worker, 7)
    release(fifo)
    assert worker.wait(timeout_s=10) == 0
    assert log.read_text().splitlines() == ["start 7", "end 7"]


@pytest.mark.parametrize("long_task", ["finishes", "outlasts the shutdown timeout"])
def test_requests_read_behind_a_long_task_are_answered_once_after_sigterm(
    held: tuple[Path, Path, Path], start_worker: WorkerFactory, long_task: str
) -> None:
    """A SIGTERM while requests read with a long task wait behind it: each gets exactly one answer.

    Read before the signal, they were accepted: they run after the long task when it
    finishes in time, and are answered retryable with it when it does not.
    """
    script, fifo, log = held
    finishes = long_task == "finishes"
    worker = start_worker(script, RUNQY_SHUTDOWN_TIMEOUT_S="30" if finishes else "0.3")
    first, *behind = worker.submit_many(
        [make_request({"n": 0, "log": str(log), "fifo": str(fifo)})]
        + [make_request({"n": n, "log": str(log)}) for n in range(1, 4)]
    )
    worker.wait_for_stderr("holding 0")
    worker.terminate()
    worker.wait_for_stderr("received SIGTERM")
    if finishes:
        release(fifo)
    assert worker.wait(timeout_s=20) == 0
    assert worker.unmatched_responses == []  # no task answered twice
    for n, task in enumerate([first, *behind]):
        assert task.response is not None, f"request {n} was never answered"
        if finishes:
            assert task.response["result"] == n
        else:
            assert task.response["retry"] is True and "shut down before the task finished" in task.response["error"]
