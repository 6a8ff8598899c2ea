"""``runqy local`` end to end, and the driver's Go-worker strictness, against real worker processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from runner_params import CLEAN_ENV

from runqy.errors import RunqyError
from runqy.local.driver import LocalWorker, make_request

WORKER = Path(__file__).parent / "workers" / "faulty_worker.py"


def runqy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runqy", *args], capture_output=True, text=True, env=CLEAN_ENV, cwd=cwd, timeout=60
    )


def summary_counts(stderr: str) -> dict[str, int]:
    line = next(line for line in stderr.splitlines() if line.strip().startswith("ok "))
    return {name: int(count) for name, count in re.findall(r"(\w+) (\d+)", line)}


@pytest.mark.timeout(60)
def test_the_built_in_example_at_16_in_flight_answers_every_task(tmp_path: Path) -> None:
    done = runqy("local", "runqy.examples.echo", "--generate", "500", "--concurrency", "16", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert summary_counts(done.stderr) == {"ok": 500, "failed": 0, "retryable": 0, "lost": 0}
    responses = [json.loads(line) for line in done.stdout.splitlines()]
    assert len({response["task_id"] for response in responses}) == 500
    assert "worker exit code 0" in done.stderr
    assert re.search(r"p50 [\d.]+ ms\s+p99 [\d.]+ ms", done.stderr)


@pytest.mark.timeout(60)
def test_input_file_mixes_payloads_and_full_requests_and_output_goes_to_a_file(tmp_path: Path) -> None:
    lines = [
        {"text": "a plain payload"},
        "a string payload",
        make_request({"fail": "retry"}, task_id="full-retry", queue="inference.high"),
        make_request({"fail": True}, task_id="full-fail"),
    ]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(line) + "\n\n" for line in lines))
    done = runqy(
        "local",
        "runqy.examples.echo",
        "--input",
        "tasks.jsonl",
        "--output",
        "out.jsonl",
        "--concurrency",
        "16",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert summary_counts(done.stderr) == {"ok": 2, "failed": 1, "retryable": 1, "lost": 0}
    by_id = {r["task_id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert len(by_id) == 4
    assert by_id["full-retry"]["retry"] is True
    assert "asked to fail" in by_id["full-fail"]["error"]


@pytest.mark.timeout(30)
def test_shutdown_term_on_an_idle_worker_takes_under_a_second(tmp_path: Path) -> None:
    done = runqy("local", "runqy.examples.echo", "--generate", "0", "--shutdown", "term", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    took = float(re.search(r"term took ([\d.]+) s", done.stderr).group(1))  # type: ignore[union-attr]
    assert took < 1.0


@pytest.mark.timeout(30)
def test_a_bad_option_is_an_error_that_says_what_was_expected(tmp_path: Path) -> None:
    done = runqy("local", "runqy.examples.echo", "--concurrency", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert "expected at least 1" in done.stderr


@pytest.mark.timeout(60)
def test_tasks_held_by_a_worker_that_dies_are_reported_lost_and_the_counts_still_add_up() -> None:
    requests = [make_request({"kind": "sleep", "s": 0.01, "n": n}) for n in range(20)]
    requests[5] = make_request({"kind": "crash", "n": 5})  # the sequential runner dies with it
    with LocalWorker([sys.executable, str(WORKER)], env=CLEAN_ENV) as worker:
        worker.wait_ready(timeout_s=30)
        outcomes = list(worker.run(requests, concurrency=4))
        assert worker.wait(timeout_s=10) == 3
    assert len(outcomes) == 20
    statuses = {o.request["payload"]["n"]: o.status for o in outcomes}
    # A response still queued in the dying process goes down with it: before the crash, ok or lost.
    assert {statuses[n] for n in range(5)} <= {"ok", "lost"}
    assert all(statuses[n] == "lost" for n in range(5, 20))


FAKE_WORKER = """
import json, sys
print(json.dumps({"status": "ready"}), flush=True)
for line in sys.stdin:
    task_id = json.loads(line)["task_id"]
    kind = json.loads(line)["payload"]
    if kind == "nan":
        print('{"task_id": "%s", "result": NaN, "error": null, "retry": false}' % task_id, flush=True)
    elif kind == "error-number":
        print(json.dumps({"task_id": task_id, "result": None, "error": 7, "retry": False}), flush=True)
    elif kind == "text":
        print("plain text on stdout", flush=True)
    else:
        print(json.dumps({"task_id": task_id, "result": kind, "error": None, "retry": False}), flush=True)
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["nan", "error-number", "text"])
def test_a_response_the_go_worker_would_drop_leaves_the_task_unanswered(tmp_path: Path, kind: str) -> None:
    script = tmp_path / "fake_worker.py"
    script.write_text(textwrap.dedent(FAKE_WORKER))
    with LocalWorker([sys.executable, str(script)], env=CLEAN_ENV) as worker:
        worker.wait_ready(timeout_s=30)
        [bad, good] = list(worker.run([make_request(kind), make_request("fine")], concurrency=1, deadline_s=0.5))
        assert bad.status == "lost"  # the Go worker would wait for its deadline too
        assert good.status == "ok"
        assert len(worker.garbage_lines) == 1
        assert "drops" in worker.violations[0]


@pytest.mark.timeout(30)
def test_two_requests_with_one_id_in_flight_are_refused() -> None:
    with LocalWorker([sys.executable, str(WORKER)], env=CLEAN_ENV) as worker:
        worker.wait_ready(timeout_s=30)
        worker.submit(make_request({"kind": "sleep", "s": 5}, task_id="same"))
        with pytest.raises(RunqyError, match="already in flight"):
            worker.submit(make_request({}, task_id="same"))
