"""The thread that runs what it read reads on what arrived meanwhile, with lines split across reads.

Real worker processes over real pipes, driven as the Go worker drives them: a few
requests in flight, each sent when an answer comes back, so that requests arrive while
the tasks read before them run. Payloads of random sizes (up to 20 KB) make lines end
anywhere in a read, and many span several.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WorkerFactory

from runqy.local.driver import make_request

ORDER_WORKER = """
import sys
from runqy import task, run

@task
def handle(payload):
    with open(sys.argv[1], "a") as log:
        log.write(f"{payload['n']}\\n")
    return payload

run()
"""

TASKS = 3000


@pytest.mark.parametrize("runner", ["sequential", "thread"])
def test_requests_arriving_while_tasks_run_are_each_answered_once_with_their_payload(
    runner: str, tmp_path: Path, write_worker: Callable[[str], Path], start_worker: WorkerFactory
) -> None:
    log = tmp_path / "ran"
    worker = start_worker(write_worker(ORDER_WORKER), str(log), RUNQY_RUNNER_CLS=runner)
    rng = random.Random(7)
    payloads = [{"n": n, "pad": "x" * rng.choice([0, 10, 300, 5_000, 20_000])} for n in range(TASKS)]
    outcomes = list(worker.run((make_request(payload) for payload in payloads), concurrency=8, deadline_s=30))
    assert len(outcomes) == TASKS
    answered = {outcome.request["task_id"]: outcome for outcome in outcomes}
    assert len(answered) == TASKS
    assert all(outcome.response is not None for outcome in outcomes), "a request was left unanswered"
    assert sorted(outcome.response["result"]["n"] for outcome in outcomes if outcome.response) == list(range(TASKS))
    assert all(outcome.response["result"] == outcome.request["payload"] for outcome in outcomes if outcome.response), (
        "a payload came back changed: a line was cut or joined wrongly"
    )
    ran = [int(n) for n in log.read_text().split()]
    if runner == "sequential":
        assert ran == list(range(TASKS)), "the sequential runner ran requests out of the order they arrived in"
    else:
        assert sorted(ran) == list(range(TASKS))
    worker.close_stdin()
    assert worker.wait(timeout_s=10) == 0
