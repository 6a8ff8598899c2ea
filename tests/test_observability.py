"""Observability on real workers: the task on every log record, JSON stderr, per-task lines, stats and metrics."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import RUNNERS, WorkerFactory

from runqy.app import Registry
from runqy.attempts import RetryPolicy
from runqy.config.resolve import load_settings
from runqy.errors import TaskFailed
from runqy.local.driver import WorkerStartFailed, make_request
from runqy.observe.logs import MAX_LOG_LINE_BYTES
from runqy.observe.report import StatsReporter
from runqy.observe.telemetry import OK, Telemetry
from runqy.protocol import TaskRequest
from runqy.runners.sequential import SequentialRunner
from runqy.worker import Worker

LOGGING_WORKER = """
import logging, os, time
from runqy import task, run

if os.environ.get("USER_FORMAT"):
    logging.basicConfig(
        level=logging.INFO, format="REC %(runqy_task_id)s|%(runqy_task_type)s|%(runqy_attempt)s|%(message)s"
    )
log = logging.getLogger(__name__)

def work(payload):
    log.warning("handling %s", payload["n"])
    if payload.get("fail_chars"):
        try:
            raise ValueError("x" * payload["fail_chars"])
        except ValueError:
            log.exception("about to fail")
            raise
    time.sleep(payload.get("sleep_s", 0))  # stands for work of that length
    return payload["n"]

if os.environ.get("RUNQY_RUNNER_CLS") == "async":  # the async runner runs async def handlers only
    @task
    async def handle(payload):
        return work(payload)
else:
    @task
    def handle(payload):
        return work(payload)

if __name__ == "__main__":
    run()
"""

DEADLINE_S = 60.0


@pytest.fixture
def logging_worker(write_worker: Callable[[str], Path]) -> Path:
    return write_worker(LOGGING_WORKER)


def test_every_record_a_handler_logs_carries_its_task_under_every_runner(
    runner_name: str, logging_worker: Path, start_worker: WorkerFactory
) -> None:
    worker = start_worker(logging_worker, USER_FORMAT="1", **RUNNERS[runner_name])
    requests = [make_request({"n": n}, task_id=f"task-{n}", queue="logged.default") for n in range(40)]
    outcomes = list(worker.run(requests, concurrency=8, deadline_s=DEADLINE_S))
    assert all(outcome.response is not None for outcome in outcomes)
    assert worker.shutdown() == 0
    records = [line for line in worker.stderr_lines if line.startswith("REC ") and "handling" in line]
    assert len(records) == 40
    for record in records:
        task_id, task_type, attempt, message = record[4:].split("|")
        assert (task_id, task_type, attempt) == (f"task-{message.split()[-1]}", "logged", "1")


def test_runqys_default_format_shows_the_task_of_a_childs_record(
    logging_worker: Path, start_worker: WorkerFactory
) -> None:
    worker = start_worker(logging_worker, **RUNNERS["process"])
    worker.call({"n": 7}, timeout_s=DEADLINE_S, task_id="seven", queue="logged.default")
    line = worker.wait_for_stderr("handling 7")
    assert re.search(r"^runqy\[child \d+\] WARNING __mp_main__: handling 7 \[task seven type=logged attempt=1\]$", line)


@pytest.mark.parametrize("runner_name", ["sequential", "process"])
def test_json_stderr_is_one_object_per_line_and_a_huge_exception_is_clipped(
    runner_name: str, logging_worker: Path, start_worker: WorkerFactory
) -> None:
    env = {**RUNNERS[runner_name], "RUNQY_LOG_FORMAT": "json", "RUNQY_STATS_INTERVAL_S": "0.05"}
    worker = start_worker(logging_worker, **env)
    assert worker.call({"n": 1}, timeout_s=DEADLINE_S)["error"] is None
    failed = worker.call({"n": 2, "fail_chars": 5 * 2**20}, timeout_s=DEADLINE_S, task_id="huge")
    assert failed["error"] is not None
    worker.wait_for_stderr('"event": "stats"')
    assert worker.shutdown() == 0
    documents = [json.loads(line) for line in worker.stderr_lines]  # every line parses
    assert not worker.violations
    assert all(len(line.encode()) < MAX_LOG_LINE_BYTES for line in worker.stderr_lines)
    logged = next(d for d in documents if d["message"] == "about to fail")
    assert (logged["task_id"], logged["attempt"], logged["level"]) == ("huge", 1, "ERROR")
    assert "clipped: " in logged["exception"] and "ValueError: xxx" in logged["exception"]
    task_line = next(d for d in documents if d.get("event") == "task")
    assert task_line["task_id"] == "huge" and task_line["outcome"] == "failed"
    assert {"duration_s", "thread", "pid", "error", "timestamp", "logger"} <= task_line.keys()
    stats = next(d for d in documents if d.get("event") == "stats")
    assert {"done", "outcomes", "tasks_per_s", "duration_p50_s", "in_flight", "capacity"} <= stats.keys()


def test_a_task_line_for_each_slow_task_and_none_for_quick_ones(
    logging_worker: Path, start_worker: WorkerFactory
) -> None:
    worker = start_worker(logging_worker, RUNQY_SLOW_TASK_S="0.2", RUNQY_RUNNER_CLS="thread")
    requests = [make_request({"n": n, "sleep_s": 0.3 if n == 3 else 0}, task_id=f"t{n}") for n in range(6)]
    assert all(o.response is not None for o in worker.run(requests, concurrency=6, deadline_s=DEADLINE_S))
    assert worker.shutdown() == 0
    task_lines = [line for line in worker.stderr_lines if " attempt=" in line and "handling" not in line]
    assert len(task_lines) == 1
    assert re.fullmatch(
        r"runqy INFO task t3 type=default attempt=1 ok \(slow\) in \d+\.\d ms on runqy-thread pid \d+", task_lines[0]
    )


def test_worker_stats_counts_outcomes_and_durations() -> None:
    registry = Registry()

    @registry.task
    def handle(payload: int) -> int:
        if payload % 5 == 0:
            raise ValueError(f"{payload} is a multiple of 5")
        return payload

    with Worker(load_settings(runner_cls="thread", python_workers=3, stats_interval_s=60), registry) as worker:
        results = worker.map(range(1, 21), return_exceptions=True)
        stats = worker.stats()
    assert sum(isinstance(r, TaskFailed) for r in results) == 4
    assert stats.outcomes["ok"] == 16 and stats.outcomes["failed"] == 4 and stats.answered == 20
    assert stats.duration_p50_s is not None and stats.duration_p99_s is not None
    assert (stats.capacity, stats.in_flight, stats.abandoned_threads, stats.child_restarts) == (3, 0, 0, {})
    assert "done 20 ok 16 failed 4" in stats.line()


def test_the_last_stats_line_comes_when_stopped_and_covers_the_time_since_the_one_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry = Telemetry(measure=True)
    reporter = StatsReporter(telemetry, SequentialRunner(RetryPolicy()), lambda: 0, interval_s=3600)
    reporter.start()
    telemetry.finished(TaskRequest("t1", type="job"), 1, OK, 0.001, "main")
    telemetry.reply_dropped("t1", late=False)
    with caplog.at_level(logging.INFO, logger="runqy.stats"):
        reporter.stop()  # long before the first interval ends
    (line,) = [record.getMessage() for record in caplog.records if record.name == "runqy.stats"]
    assert re.match(r"stats \d+s: done 1 ok 1 ", line) and line.endswith(" duplicate_replies 1"), line


METRICS_WORKER = """
import time
from runqy import task, run

@task
def handle(payload):
    if payload.get("fail"):
        raise ValueError("asked to fail")
    time.sleep(payload.get("sleep_s", 0))  # stands for a task that overruns its timeout
    return payload["n"]

if __name__ == "__main__":
    run()
"""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("runner_name", ["process", "hybrid"])
def test_a_scrape_after_1000_tasks_shows_their_outcomes_exactly(
    runner_name: str, write_worker: Callable[[str], Path], start_worker: WorkerFactory
) -> None:
    pytest.importorskip("prometheus_client")
    env = {**RUNNERS[runner_name], "RUNQY_METRICS_PORT": "0", "RUNQY_TASK_TIMEOUT_S": "0.5"}
    worker = start_worker(write_worker(METRICS_WORKER), **env)
    port = int(re.findall(r"metrics: serving http://[\d.]+:(\d+)/metrics", worker.wait_for_stderr("metrics:"))[0])

    def payload(n: int) -> dict[str, object]:
        return {"n": n, "fail": n % 100 == 0, "sleep_s": 5 if n % 200 == 1 else 0}

    requests = [make_request(payload(n), queue="job.default") for n in range(1000)]
    outcomes = list(worker.run(requests, concurrency=4, deadline_s=DEADLINE_S))
    assert len(outcomes) == 1000 and all(outcome.response is not None for outcome in outcomes)

    expected = {"ok": 985.0, "failed": 10.0, "timed_out": 5.0}
    restarts = {"timeout": 5.0} if runner_name == "process" else {}

    samples = scrape(port)
    tasks = {labels: value for (name, labels), value in samples.items() if name == "runqy_tasks_total"}
    assert tasks == {(("outcome", outcome), ("type", "job")): count for outcome, count in expected.items()}

    def restarts_counted() -> dict[str, float]:
        return {labels[0][1]: v for (name, labels), v in scrape(port).items() if name == "runqy_child_restarts_total"}

    # A killed child is replaced after its task is answered: poll until the last replacement is counted.
    deadline = time.monotonic() + DEADLINE_S
    while restarts_counted() != restarts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert restarts_counted() == restarts
    assert samples[("runqy_task_duration_seconds_count", (("type", "job"),))] == 1000.0
    assert samples[("runqy_runner_capacity", ())] == (4.0 if runner_name == "hybrid" else 2.0)
    assert samples[("runqy_tasks_in_flight", ())] == 0.0
    assert samples[("runqy_duplicate_replies_total", ())] == samples[("runqy_late_replies_total", ())] == 0.0
    assert [k for k in samples if k[0] == "runqy_child_rss_bytes"]


def test_a_metrics_port_in_use_fails_start_up_saying_so(logging_worker: Path, start_worker: WorkerFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker(
            logging_worker, ready=False, RUNQY_METRICS_PORT=str(port), RUNQY_METRICS_ADDRESS="127.0.0.1"
        )
        with pytest.raises(WorkerStartFailed, match=rf"metrics_port={port}: cannot listen on 127.0.0.1:{port}"):
            worker.wait_ready(30)
        assert worker.wait() == 1


def test_the_stats_of_a_batch_handler_say_how_full_its_calls_were() -> None:
    registry = Registry()
    registry.task(batch_size=8)(lambda payloads: payloads)
    with Worker(load_settings(runner_cls="thread", python_workers=2), registry) as worker:
        worker.map(range(100))
        stats = worker.stats()
    assert stats.batched_tasks == 100 and 13 <= stats.batch_calls <= 100
    assert stats.mean_batch_size == 100 / stats.batch_calls
    assert f"batches {stats.batch_calls} mean {stats.mean_batch_size:.1f}" in stats.line()
