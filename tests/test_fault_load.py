"""Load with faults, through the local driver and real processes: nothing lost, nothing answered twice.

``RUNQY_SOAK=1`` multiplies the task counts by ten for a longer soak.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections import Counter

import pytest
from runner_params import CLEAN_ENV, faulty_worker, runner_params

from runqy.local.driver import LocalWorker, make_request
from runqy.local.stats import Outcome
from runqy.serve import DUPLICATE_REPLY

SCALE = 10 if os.environ.get("RUNQY_SOAK") == "1" else 1
#: One task in a hundred of each kind misbehaves.
FAULTS = ("crash", "hang", "raise", "fd1")
#: Runners that run tasks in a child process: elsewhere a crash ends the whole worker, so it is left out.
IN_CHILDREN = ("process", "hybrid")
#: How an answer names the crash of the process that ran it (exit code 3 is the faulty worker's).
CRASH_ERROR = "worker process exited with code 3"
#: How an answer names a hang ended by ``task_timeout_s``.
TIMEOUT_ERROR = "task timed out: attempt 1 ran longer than task_timeout_s=0.3"
#: Under the hybrid runner, what other tasks of a child may be answered with, and why:
COLLATERAL_ERRORS = (
    CRASH_ERROR,  # a crash takes down the tasks on the child's other threads too
    "was killed because another task in it timed out",  # a child too busy to time out its hang is killed
)


#: The figures of a stats line that this suite checks.
STATS_LINE = re.compile(r"runqy INFO stats \d+s: done (?P<done>\d+) .* duplicate_replies (?P<duplicates>\d+)\b")


def mixed_requests(count: int, faults: tuple[str, ...] = FAULTS, seed: int = 5) -> list[dict[str, object]]:
    rng = random.Random(seed)
    kinds = [fault for fault in faults for _ in range(count // 100)]
    kinds += ["echo"] * (count - len(kinds))
    rng.shuffle(kinds)
    return [make_request({"kind": kind, "n": n}, task_id=f"task-{n}") for n, kind in enumerate(kinds)]


def check_outcome(outcome: Outcome, runner: str) -> None:
    """Each kind of task has one right answer; under the hybrid runner, also a retryable collateral failure."""
    payload = outcome.request["payload"]
    assert isinstance(payload, dict)
    response = outcome.response
    assert response is not None, f"{payload} was lost"
    kind, error = payload["kind"], response["error"] or ""
    if runner == "hybrid" and kind != "crash" and any(why in error for why in COLLATERAL_ERRORS):
        assert response["retry"] is True and response["result"] is None, response
        return
    if kind == "echo":
        assert response["result"] == payload and response["error"] is None, response
    elif kind == "fd1":
        assert response["result"] == {"n": payload["n"]} and response["error"] is None, response
    elif kind == "raise":
        assert f"ValueError: task {payload['n']} asked to fail" in error and response["retry"] is False, response
    elif kind == "hang":  # timed out, which is retryable
        assert error.startswith(TIMEOUT_ERROR) and response["retry"] is True, response
    else:  # crash: the answer names the exit code; the Go worker may retry it on another worker
        assert kind == "crash" and error.startswith(CRASH_ERROR) and response["retry"] is True, response


@pytest.mark.timeout(300 * SCALE)
@pytest.mark.parametrize("runner", runner_params(*IN_CHILDREN, "async"))
def test_ten_thousand_tasks_with_crashes_hangs_raises_and_fd1_noise_are_each_answered_once(
    runner: str,
) -> None:
    faults = FAULTS if runner in IN_CHILDREN else tuple(fault for fault in FAULTS if fault != "crash")
    requests = mixed_requests(10_000 * SCALE, faults)
    env = {**CLEAN_ENV, "RUNQY_RUNNER_CLS": runner, "RUNQY_TASK_TIMEOUT_S": "0.3", "RUNQY_STATS_INTERVAL_S": "1"}
    with LocalWorker([sys.executable, str(faulty_worker(runner))], env=env) as worker:
        worker.wait_ready(timeout_s=60)
        outcomes = list(worker.run(requests, concurrency=16, deadline_s=60))
        answered = Counter(outcome.request["task_id"] for outcome in outcomes)
        assert len(outcomes) == len(requests)
        assert set(answered) == {request["task_id"] for request in requests}
        assert max(answered.values()) == 1
        for outcome in outcomes:
            check_outcome(outcome, runner)
        assert worker.unmatched_responses == []  # no duplicate or stray answer
        assert worker.garbage_lines == [], worker.violations  # fd 1 noise never reached the protocol stream
        assert worker.process.poll() is None, "the worker must survive its tasks' crashes"
        assert worker.call({"kind": "echo", "after": "load"}, timeout_s=30)["error"] is None
        assert worker.shutdown("close-stdin") == 0
    # A second answer never reaches stdout (the worker drops it), so it is looked for where it is
    # logged and counted: the stats lines add up to every task answered, none of them twice.
    assert [line for line in worker.stderr_lines if DUPLICATE_REPLY in line] == []
    assert stats_totals(worker.stderr_lines) == (len(requests) + 1, 0)


def stats_totals(stderr_lines: list[str]) -> tuple[int, int]:
    """Tasks answered and duplicate replies, summed over the worker's stats lines (the last comes at exit)."""
    figures = [STATS_LINE.search(line) for line in stderr_lines]
    counts = [(int(found["done"]), int(found["duplicates"])) for found in figures if found]
    assert counts, "the worker logged no stats line"
    return sum(done for done, _ in counts), sum(duplicates for _, duplicates in counts)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("runner", runner_params())
def test_sigterm_in_the_middle_of_a_loaded_run_answers_everything_it_accepted(runner: str) -> None:
    requests = [make_request({"kind": "sleep", "s": 0.002, "n": n}) for n in range(2_000 * SCALE)]
    env = {**CLEAN_ENV, "RUNQY_RUNNER_CLS": runner}
    with LocalWorker([sys.executable, str(faulty_worker(runner))], env=env) as worker:
        worker.wait_ready(timeout_s=60)
        outcomes: list[Outcome] = []
        signalled_at = None
        for outcome in worker.run(requests, concurrency=16, deadline_s=30):
            outcomes.append(outcome)
            if len(outcomes) == len(requests) // 4:
                worker.terminate()  # with stdin open, as the Go worker does, while 16 tasks are in flight
                signalled_at = outcome.answered_at
        code = worker.wait(timeout_s=15)
    assert code == 0
    assert signalled_at is not None
    assert len(outcomes) == len(requests)
    # Everything sent before the signal was accepted by the worker and must be answered:
    # done (ok), or refused with a retryable error once the shutdown began.
    before = [o for o in outcomes if o.sent_at <= signalled_at]
    assert before and all(o.response is not None for o in before), [o.request for o in before if o.response is None]
    assert {o.status for o in before} <= {"ok", "retryable"}
    # Later requests may have reached a worker that had stopped reading: lost is allowed, a wrong answer is not.
    assert {o.status for o in outcomes} <= {"ok", "retryable", "lost"}
    assert worker.unmatched_responses == []
    assert [line for line in worker.stderr_lines if DUPLICATE_REPLY in line] == []
