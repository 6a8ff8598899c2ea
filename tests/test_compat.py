"""A runqy-python 0.2.2 style worker, switched by its import line only, fed raw lines over real pipes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WorkerFactory

COMPAT_WORKER = """
import math, os, sys
from runqy import task, load, run, RetryableError

@load
def setup():
    return {"greeting": "hello"}

@task
def handle(payload, ctx):
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind == "retry":
        raise RetryableError("upstream busy, try later")
    if kind == "raise":
        raise ValueError("bad payload value")
    if kind == "nan":
        return {"score": math.nan}
    if kind == "set":
        return {1, 2, 3}
    if kind == "huge":
        return "x" * (12 * 1024 * 1024)
    if kind == "noise":
        print("print() output")
        os.system("echo shell output")
        os.write(1, b"raw fd 1 output\\n")
        sys.stdout.write("sys.stdout output\\n")
        return "quiet"
    return {"echo": payload, "greeting": ctx["greeting"]}

if __name__ == "__main__":
    run()
"""


@pytest.fixture
def compat_worker(write_worker: Callable[[str], Path], start_worker: WorkerFactory) -> object:
    return start_worker(write_worker(COMPAT_WORKER))


def test_ready_line_comes_first_and_results_echo(compat_worker) -> None:  # type: ignore[no-untyped-def]
    assert compat_worker.status_lines == [{"status": "ready"}]
    response = compat_worker.call({"n": 1}, timeout_s=10, task_id="t-1")
    assert response == {
        "task_id": "t-1",
        "result": {"echo": {"n": 1}, "greeting": "hello"},
        "error": None,
        "retry": False,
    }


def test_retryable_error_sets_retry_true(compat_worker) -> None:  # type: ignore[no-untyped-def]
    response = compat_worker.call({"kind": "retry"}, timeout_s=10)
    assert response["error"] == "upstream busy, try later"
    assert response["retry"] is True
    assert response["result"] is None


def test_other_exceptions_carry_the_traceback_and_are_not_retried(compat_worker) -> None:  # type: ignore[no-untyped-def]
    response = compat_worker.call({"kind": "raise"}, timeout_s=10)
    assert "ValueError: bad payload value" in response["error"]
    assert "Traceback" in response["error"]
    assert response["retry"] is False


@pytest.mark.parametrize(
    ("line", "task_id", "says"),
    [
        (b"this is not json", "", "not valid JSON"),
        (b"[1, 2, 3]", "", "got a JSON array"),
        (b'"a string"', "", "got a JSON string"),
        (b'{"payload": 1}', "", "missing task_id"),
        (b'{"task_id": 42, "payload": 1}', "", "task_id must be a string"),
        (b'{"task_id": "t-salvage", "payload": }', "t-salvage", "not valid JSON"),
        (b'{"task_id": "t-type", "type": 7}', "t-type", "type must be a string"),
        (b'{"task_id": "t-retry", "retry_count": "one"}', "t-retry", "retry_count must be an integer"),
    ],
)
def test_bad_request_lines_get_an_error_response_saying_what_was_wrong(
    compat_worker,  # type: ignore[no-untyped-def]
    line: bytes,
    task_id: str,
    says: str,
) -> None:
    compat_worker.send_line(line + b"\n")
    compat_worker.send_line(b"\n   \n")  # blank lines are skipped without an answer
    assert compat_worker.call({"n": 2}, timeout_s=10)["error"] is None  # answered after the bad line: it was handled
    [answer] = compat_worker.unmatched_responses
    assert answer["task_id"] == task_id
    assert says in answer["error"]
    assert "expected" in answer["error"] or " must be " in answer["error"]
    assert answer["retry"] is False and answer["result"] is None


@pytest.mark.parametrize("kind", ["nan", "set"])
def test_results_that_are_not_json_become_valid_error_responses(compat_worker, kind: str) -> None:  # type: ignore[no-untyped-def]
    response = compat_worker.call({"kind": kind}, timeout_s=10)
    assert response["error"].startswith("result is not JSON")
    assert response["retry"] is False
    assert compat_worker.garbage_lines == []  # every line parsed as strict JSON


def test_a_result_over_the_line_limit_is_refused_and_later_tasks_still_work(compat_worker) -> None:  # type: ignore[no-untyped-def]
    response = compat_worker.call({"kind": "huge"}, timeout_s=30)
    assert "must stay under 10 MiB" in response["error"]
    assert compat_worker.call({"n": 3}, timeout_s=10)["result"]["echo"] == {"n": 3}


def test_output_of_print_shell_and_fd1_never_reaches_the_protocol_stream(compat_worker) -> None:  # type: ignore[no-untyped-def]
    assert compat_worker.call({"kind": "noise"}, timeout_s=10)["result"] == "quiet"
    assert compat_worker.shutdown("close-stdin") == 0
    assert compat_worker.garbage_lines == []
    for noise in ("print() output", "shell output", "raw fd 1 output", "sys.stdout output"):
        assert noise in compat_worker.stderr_lines


def test_load_failure_reports_an_error_status_and_exits_non_zero(write_worker, start_worker) -> None:  # type: ignore[no-untyped-def]
    script = write_worker(
        """
        from runqy import task, load, run

        @load
        def setup():
            raise RuntimeError("model file missing")

        @task
        def handle(payload, ctx):
            return payload

        run()
        """
    )
    worker = start_worker(script, ready=False)
    assert worker.wait() != 0
    [status] = worker.status_lines
    assert status["status"] == "error"
    assert "model file missing" in status["error"]


def test_every_response_line_has_exactly_the_four_keys(compat_worker) -> None:  # type: ignore[no-untyped-def]
    for payload in ({"n": 1}, {"kind": "retry"}, {"kind": "raise"}, {"kind": "nan"}):
        response = compat_worker.call(payload, timeout_s=10)
        assert list(response) == ["task_id", "result", "error", "retry"]
        assert isinstance(response["retry"], bool)
        assert response["error"] is None or isinstance(response["error"], str)
    json.dumps(compat_worker.unmatched_responses)  # nothing unmatched, nothing odd
    assert compat_worker.unmatched_responses == []
