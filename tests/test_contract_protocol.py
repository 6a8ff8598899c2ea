"""The runner contract through the real protocol: a worker process on real pipes, driven as the Go worker does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import behaviours
import psutil
from behaviours import LOAD_GREETING, LOADS_DIR_VAR
from conftest import BEHAVIOURS_OF, RUNNERS, capacity_of
from harness import wait_for_files
from runner_params import CLEAN_ENV

from runqy.local.driver import LocalWorker, Outcome, make_request

Spawn = Callable[..., LocalWorker]

#: Generous bound for "answered within 1 s" acceptance statements on a busy machine.
WITHIN_1S_BOUND_S = 3.0
ANSWER_TIMEOUT_S = 10.0
#: An idle worker exits this soon after SIGTERM, on every runner, however busy the machine.
IDLE_SHUTDOWN_S = 1.0
#: How long an idle worker's CPU use is measured.
IDLE_WINDOW_S = 1.0


def test_bad_lines_and_failures_are_each_answered_once(spawn: Spawn) -> None:
    worker = spawn()
    payloads = [{"op": "echo"}, {"op": "fail"}, {"op": "retryable"}, {"op": "not_json"}, {"op": "exit"}]
    pendings = [worker.submit(make_request(payload, task_id=f"t{n}")) for n, payload in enumerate(payloads * 20)]
    worker.send_line(b'{"task_id": "bad-1", "payload": [1,\n')  # broken JSON with a readable task id
    worker.send_line(b"\n")  # blank lines get no answer
    worker.send_line(b'{"task_id": 7, "payload": null}\n')  # no string task_id: answered with an empty id
    for pending in pendings:
        assert pending.done.wait(ANSWER_TIMEOUT_S)
    assert worker.shutdown() == 0
    statuses = [pending.outcome().status for pending in pendings[:5]]
    assert statuses == ["ok", "failed", "retryable", "failed", "failed"]
    assert "result is not JSON" in pendings[3].response["error"]  # type: ignore[index]
    assert sorted(r["task_id"] for r in worker.unmatched_responses) == ["", "bad-1"]
    assert all(r["error"] and r["retry"] is False for r in worker.unmatched_responses)
    assert worker.garbage_lines == []


def test_ten_thousand_tasks_give_ten_thousand_well_formed_lines(spawn: Spawn) -> None:
    worker = spawn()
    requests = [make_request({"op": "echo", "n": n}, task_id=f"t{n}") for n in range(10_000)]
    outcomes = list(worker.run(requests, concurrency=64))
    assert worker.shutdown() == 0
    assert sorted(o.response["task_id"] for o in outcomes if o.response) == sorted(r["task_id"] for r in requests)
    assert all(o.response == _ok(o.request) for o in outcomes)
    assert worker.unmatched_responses == [] and worker.garbage_lines == []


def test_a_stream_beyond_what_the_worker_holds_is_answered_once_each(spawn: Spawn) -> None:
    """A driver that writes more requests than the worker takes at once (capacity + 10,000).

    The worker stops reading until answers make room, so the driver blocks on a full
    pipe; every request is still answered, once. The process runner reads stdin on the
    thread that also makes the answers: it must stop reading, never wait for room.
    """
    worker = spawn()
    requests = [make_request({"op": "echo", "n": n}, task_id=f"t{n}") for n in range(25_000)]
    outcomes = list(worker.run(requests, concurrency=len(requests), deadline_s=120))
    assert worker.shutdown() == 0
    assert sorted(o.response["task_id"] for o in outcomes if o.response) == sorted(r["task_id"] for r in requests)
    assert worker.unmatched_responses == [] and worker.garbage_lines == []


def test_a_worker_left_idle_after_quick_tasks_one_at_a_time_uses_no_cpu(spawn: Spawn) -> None:
    """With ``spin_wait_us``, quick tasks one at a time make the threads that wait for requests
    and answers poll before sleeping; once nothing comes, they must sleep, on every runner."""
    worker = spawn(RUNQY_SPIN_WAIT_US="200")
    requests = [make_request({"op": "echo", "n": n}, task_id=f"t{n}") for n in range(300)]
    outcomes = list(worker.run(requests, concurrency=1))
    assert all(o.response == _ok(o.request) for o in outcomes)
    tree = psutil.Process(worker.process.pid)
    before = _cpu_s(tree)
    time.sleep(IDLE_WINDOW_S)  # the span measured, not a synchronisation
    used_s = _cpu_s(tree) - before
    assert used_s < 0.1 * IDLE_WINDOW_S, f"an idle worker used {used_s:.3f} s of CPU in {IDLE_WINDOW_S} s"
    assert worker.shutdown() == 0


def _cpu_s(process: psutil.Process) -> float:
    """CPU seconds used so far by ``process`` and its children (the process runner's)."""
    return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])


def test_requests_from_a_file_are_answered_and_its_end_ends_the_worker(runner_name: str, tmp_path: Path) -> None:
    """``python worker.py < requests.jsonl``: stdin is a regular file, not a pipe (poll, not epoll, reads it)."""
    requests = [make_request({"op": "echo", "n": n}, task_id=f"t{n}") for n in range(50)]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    target = BEHAVIOURS_OF.get(runner_name, behaviours).__file__
    with (tmp_path / "requests.jsonl").open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "runqy", "run", target],
            stdin=stdin,
            capture_output=True,
            env={**CLEAN_ENV, **RUNNERS[runner_name]},
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    ready, *answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert ready == {"status": "ready"}
    assert sorted(answers, key=_n) == [_ok(request) for request in requests]  # each once, none lost


def test_retry_after_timeout_is_answered_at_once(spawn: Spawn) -> None:
    worker = spawn(RUNQY_TASK_TIMEOUT_S="0.3", RUNQY_MAX_RETRIES="1")
    outcome = _outcome(worker, {"op": "stuck_first"})
    assert outcome.response is not None
    assert (outcome.response["result"], outcome.response["error"]) == ({"attempt": 2}, None)
    assert outcome.latency_s < WITHIN_1S_BOUND_S
    assert worker.shutdown() == 0


def test_timeout_is_answered_at_once_and_others_run_meanwhile(runner_name: str, spawn: Spawn, tmp_path: Path) -> None:
    loads, meeting = tmp_path / "loads", tmp_path / "meeting"
    loads.mkdir(), meeting.mkdir()
    env = {"RUNQY_TASK_TIMEOUT_S": "1", "RUNQY_MAX_RETRIES": "0"}
    capacity = capacity_of(runner_name, **env)
    worker = spawn(**env, **{LOADS_DIR_VAR: str(loads)})
    loaded = len(os.listdir(loads))
    outcome = _outcome(worker, {"op": "stuck"})
    assert outcome.status == "retryable" and "task_timeout_s=1" in outcome.response["error"]  # type: ignore[index]
    assert outcome.latency_s < WITHIN_1S_BOUND_S
    if runner_name == "process":
        # The stuck task's child was killed. Meeting tasks wait for each other under the 1 s
        # timeout, so they start once its replacement is loaded, not while it starts up.
        wait_for_files(loads, loaded + 1)
    meet = {"op": "rendezvous", "dir": str(meeting), "parties": capacity}
    outcomes = list(worker.run([make_request(meet) for _ in range(capacity)], concurrency=capacity))
    assert [o.response["result"] for o in outcomes if o.response] == ["met"] * capacity
    assert worker.shutdown() == 0


def test_load_context_is_shared_as_the_runner_declares(runner_name: str, spawn: Spawn) -> None:
    from conftest import RUNNERS

    from runqy.config.settings import resolve_runner_class

    worker = spawn()
    outcomes = list(worker.run([make_request({"op": "context"}) for _ in range(32)], concurrency=8))
    results = [o.response["result"] for o in outcomes if o.response]
    assert len(results) == 32
    tokens_by_pid: dict[int, set[str]] = {}
    for result in results:
        tokens_by_pid.setdefault(result["pid"], set()).add(result["token"])
    assert all(len(tokens) == 1 for tokens in tokens_by_pid.values())
    if resolve_runner_class(RUNNERS[runner_name]["RUNQY_RUNNER_CLS"]).capabilities.shares_load_context:
        assert len(tokens_by_pid) == 1
    assert worker.shutdown() == 0


def test_stdin_eof_drains_in_flight_tasks(spawn: Spawn) -> None:
    worker = spawn()
    pendings = [worker.submit(make_request({"op": "work", "seconds": 0.1})) for _ in range(5)]
    worker.close_stdin()
    assert worker.wait() == 0
    assert [p.outcome().status for p in pendings] == ["ok"] * 5


def test_sigterm_drains_running_tasks_then_exits_zero(runner_name: str, spawn: Spawn, tmp_path: Path) -> None:
    worker = spawn()
    count = min(capacity_of(runner_name), 4)
    pendings = [worker.submit(make_request({"op": "work", "seconds": 0.3, "dir": str(tmp_path)})) for _ in range(count)]
    wait_for_files(tmp_path, count)  # all running: the signal lands mid-task
    worker.terminate()
    assert worker.wait() == 0
    assert [p.outcome().status for p in pendings] == ["ok"] * count


def test_sigterm_when_idle_exits_zero_within_a_second(spawn: Spawn) -> None:
    worker = spawn()
    assert worker.call({"op": "echo"}, timeout_s=ANSWER_TIMEOUT_S)["error"] is None
    signalled_at = time.monotonic()
    worker.terminate()
    code = worker.process.wait(ANSWER_TIMEOUT_S)
    took_s = time.monotonic() - signalled_at
    assert code == 0
    # The promise itself ("SIGTERM while idle exits at once", docs/index.md), measured from the
    # signal to the exit: it covers stopping the children of the process and hybrid runners.
    assert took_s < IDLE_SHUTDOWN_S, f"an idle worker took {took_s:.2f}s to exit after SIGTERM"


def test_print_in_load_and_shell_output_never_reach_stdout(spawn: Spawn) -> None:
    worker = spawn()
    response = worker.call({"op": "shell", "command": "echo from a shell command"}, timeout_s=ANSWER_TIMEOUT_S)
    assert (response["result"], response["error"]) == (0, None)
    assert worker.shutdown() == 0
    # Both went somewhere a user can read them: stderr, which the Go worker logs. Searched
    # within lines: the children of the process runners print their greetings at the same
    # moment, and one child's print may land in the middle of another's line.
    stderr = "\n".join(worker.stderr_lines)
    assert LOAD_GREETING in stderr and "from a shell command" in stderr
    assert worker.garbage_lines == [] and worker.unmatched_responses == []


def _outcome(worker: LocalWorker, payload: object) -> Outcome:
    (outcome,) = worker.run([make_request(payload)], concurrency=1)
    return outcome


def _n(message: dict[str, Any]) -> int:
    return int(message["task_id"][1:])


def _ok(request: dict[str, object]) -> dict[str, object]:
    return {"task_id": request["task_id"], "result": request["payload"], "error": None, "retry": False}
