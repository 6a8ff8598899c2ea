"""The thread runner's threads read stdin themselves; a task that runs long never holds up another task.

Real worker processes over real pipes. A task is held by a FIFO that the test opens to
let it go, so nothing waits on a clock: while it is held, the tasks read with it or
after it must be answered, and stdin must be read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WorkerFactory

from runqy.local.driver import LocalWorker, make_request

HELD_WORKER = """
import sys, time
from runqy import task, run

@task
def handle(payload):
    if payload.get("say"):
        print(f"running {payload['n']}", file=sys.stderr, flush=True)
    time.sleep(payload.get("sleep_s", 0))
    if "fifo" in payload:
        print(f"holding {payload['n']}", file=sys.stderr, flush=True)
        with open(payload["fifo"]) as fifo:  # blocks until the test opens the FIFO for writing
            fifo.read()
    return payload["n"]

run()
"""

ANSWER_S = 10


@pytest.fixture
def held(tmp_path: Path, write_worker: Callable[[str], Path]) -> tuple[Path, Path]:
    """The worker script and the FIFO that holds a task."""
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    return write_worker(HELD_WORKER), fifo


def start(script: Path, start_worker: WorkerFactory, max_threads: int = 4) -> LocalWorker:
    return start_worker(script, RUNQY_RUNNER_CLS="thread", RUNQY_RUNNER__MAX_THREADS=str(max_threads))


def release(fifo: Path) -> None:
    with open(fifo, "w") as writer:
        writer.write("go")


# Two: read in one chunk, the requests behind the held one wait to be parsed one by one, in turn.
# Fifty-nine: a burst, accepted whole at once, whose tasks must still reach the other threads.
@pytest.mark.parametrize("quick_count", [2, 59], ids=["read-in-turn", "burst-accepted-whole"])
def test_tasks_read_together_with_a_held_one_are_answered_while_it_runs(
    quick_count: int, held: tuple[Path, Path], start_worker: WorkerFactory
) -> None:
    script, fifo = held
    worker = start(script, start_worker)
    # One write: the worker reads them in one chunk, and the held task comes first.
    first, *quick = worker.submit_many(
        [make_request({"n": 0, "fifo": str(fifo)}), *(make_request({"n": n}) for n in range(1, quick_count + 1))]
    )
    for task in quick:
        assert worker.wait_for(task, timeout_s=ANSWER_S), "a quick task waited behind a held one"
    assert [task.response["result"] for task in quick if task.response] == list(range(1, quick_count + 1))
    assert first.response is None
    release(fifo)
    assert worker.wait_for(first, timeout_s=ANSWER_S)
    assert first.response is not None and first.response["result"] == 0
    worker.close_stdin()
    assert worker.wait(timeout_s=ANSWER_S) == 0


def test_a_burst_read_on_is_all_answered_when_one_of_its_tasks_takes_the_turn_away(
    held: tuple[Path, Path], start_worker: WorkerFactory
) -> None:
    # The thread holding the turn runs twenty tasks read together, each shorter than the
    # guard's 1 ms; the burst written meanwhile is what it reads on. The burst's first task
    # runs long, so the guard takes the turn away: the 39 behind it must still run. (On a
    # busy machine the guard may take the turn earlier, and the burst is read as usual.)
    script, _ = held
    worker = start(script, start_worker)
    first = worker.submit_many(
        [
            make_request({"n": 0, "say": True, "sleep_s": 0.0005}),
            *(make_request({"n": n, "sleep_s": 0.0005}) for n in range(1, 20)),
        ]
    )
    worker.wait_for_stderr("running 0")
    burst = worker.submit_many(
        [make_request({"n": 20, "sleep_s": 0.02}), *(make_request({"n": n}) for n in range(21, 60))]
    )
    for task in first + burst:
        assert worker.wait_for(task, timeout_s=ANSWER_S), f"task {task.request['payload']['n']} was never answered"
    assert sorted(task.response["result"] for task in first + burst if task.response) == list(range(60))
    worker.close_stdin()
    assert worker.wait(timeout_s=ANSWER_S) == 0


def test_stdin_is_read_and_answered_while_tasks_hold_threads(
    held: tuple[Path, Path], start_worker: WorkerFactory
) -> None:
    script, _ = held
    fifos = [script.parent / f"hold-{n}" for n in range(2)]  # one each: one writer may release every reader of a FIFO
    for fifo in fifos:
        os.mkfifo(fifo)
    worker = start(script, start_worker)
    holding = [worker.submit(make_request({"n": n, "fifo": str(fifo)})) for n, fifo in enumerate(fifos)]
    for n in range(2):
        worker.wait_for_stderr(f"holding {n}")
    bad = worker.submit({"task_id": "bad-line", "payload": None, "retry_count": "zero"})
    quick = [worker.submit(make_request({"n": n})) for n in range(2, 12)]
    assert worker.wait_for(bad, timeout_s=ANSWER_S)
    assert bad.response is not None and "retry_count must be an integer" in bad.response["error"]
    for task in quick:
        assert worker.wait_for(task, timeout_s=ANSWER_S)
    assert [task.response["result"] for task in quick if task.response] == list(range(2, 12))
    assert all(task.response is None for task in holding)
    for fifo in fifos:
        release(fifo)
    for task in holding:
        assert worker.wait_for(task, timeout_s=ANSWER_S)
    worker.close_stdin()
    assert worker.wait(timeout_s=ANSWER_S) == 0


def test_after_a_long_task_each_chunk_is_shared_out_at_once_and_every_task_answered(
    held: tuple[Path, Path], start_worker: WorkerFactory
) -> None:
    script, _ = held
    fifos = [script.parent / f"hold-{n}" for n in range(2)]
    for fifo in fifos:
        os.mkfifo(fifo)
    worker = start(script, start_worker)
    slow = worker.submit(make_request({"n": 0, "sleep_s": 0.05}))  # stands for a slow task: chunks are shared out
    assert worker.wait_for(slow, timeout_s=ANSWER_S)
    first, *quick = worker.submit_many(
        [make_request({"n": 1, "fifo": str(fifos[0])}), *(make_request({"n": n}) for n in range(2, 6))]
    )
    second = worker.submit(make_request({"n": 6, "fifo": str(fifos[1])}))
    worker.wait_for_stderr("holding 6")
    for task in quick:
        assert worker.wait_for(task, timeout_s=ANSWER_S), "a quick task waited behind a held one"
    assert [task.response["result"] for task in quick if task.response] == [2, 3, 4, 5]
    assert first.response is None and second.response is None
    for fifo in fifos:
        release(fifo)
    for n, task in zip((1, 6), (first, second), strict=True):
        assert worker.wait_for(task, timeout_s=ANSWER_S)
        assert task.response is not None and task.response["result"] == n


def test_eof_while_a_task_is_held_still_answers_everything_and_exits_0(
    held: tuple[Path, Path], start_worker: WorkerFactory
) -> None:
    script, fifo = held
    worker = start(script, start_worker)
    tasks = worker.submit_many([make_request({"n": 0, "fifo": str(fifo)}), make_request({"n": 1})])
    worker.wait_for_stderr("holding 0")
    assert worker.wait_for(tasks[1], timeout_s=ANSWER_S)
    worker.close_stdin()
    release(fifo)
    assert worker.wait(timeout_s=ANSWER_S) == 0
    assert [task.response["result"] for task in tasks if task.response] == [0, 1]


def test_a_pool_of_one_thread_runs_the_task_read_behind_a_held_one_once_it_is_free(
    held: tuple[Path, Path], start_worker: WorkerFactory
) -> None:
    script, fifo = held
    worker = start(script, start_worker, max_threads=1)
    first, second = worker.submit_many([make_request({"n": 0, "fifo": str(fifo)}), make_request({"n": 1})])
    worker.wait_for_stderr("holding 0")
    release(fifo)
    assert worker.wait_for(second, timeout_s=ANSWER_S)
    assert worker.wait_for(first, timeout_s=ANSWER_S)
    assert [first.response and first.response["result"], second.response and second.response["result"]] == [0, 1]
