"""Shutdown as the Go worker does it: stdin EOF, SIGTERM with stdin open, a second signal; and one-shot mode."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WorkerFactory

from runqy.app import Registry
from runqy.config.settings import RunqySettings
from runqy.inline import HostedStdin, ReadChunk, StdinHost
from runqy.local.driver import make_request
from runqy.protocol import READY_LINE, ProtocolChannel
from runqy.serve import Server

SLOW_WORKER = """
import sys, time
from runqy import task, run, run_once

@task
def handle(payload):
    print(f"started {payload['name']}", file=sys.stderr, flush=True)
    time.sleep(payload["sleep_s"])  # stands for real work of that length
    return payload["name"]

if __name__ == "__main__":
    run_once() if "--once" in sys.argv else run()
"""


@pytest.fixture
def slow_worker(write_worker: Callable[[str], Path]) -> Path:
    return write_worker(SLOW_WORKER)


def test_sigterm_on_an_idle_worker_blocked_on_stdin_exits_0_at_once(
    slow_worker: Path, start_worker: WorkerFactory
) -> None:
    worker = start_worker(slow_worker)
    sent = time.monotonic()
    worker.terminate()
    assert worker.wait(timeout_s=5) == 0
    assert time.monotonic() - sent < 1.0


def test_sigterm_during_a_task_answers_it_then_exits_0(slow_worker: Path, start_worker: WorkerFactory) -> None:
    worker = start_worker(slow_worker)
    pending = worker.submit(make_request({"name": "long", "sleep_s": 2}))
    worker.wait_for_stderr("started long")
    worker.terminate()
    assert worker.wait(timeout_s=10) == 0
    assert pending.response is not None
    assert pending.response["result"] == "long"


def test_a_task_outliving_the_shutdown_timeout_is_answered_retryable(
    slow_worker: Path, start_worker: WorkerFactory
) -> None:
    worker = start_worker(slow_worker, RUNQY_SHUTDOWN_TIMEOUT_S="0.2")
    pending = worker.submit(make_request({"name": "endless", "sleep_s": 600}))
    worker.wait_for_stderr("started endless")
    worker.terminate()
    assert worker.wait(timeout_s=10) == 0
    assert pending.response is not None
    assert pending.response["retry"] is True
    assert "shutdown_timeout_s=0.2" in pending.response["error"]


def test_stdin_eof_with_tasks_in_flight_answers_all_then_exits_0(
    slow_worker: Path, start_worker: WorkerFactory
) -> None:
    worker = start_worker(slow_worker)
    pending = [worker.submit(make_request({"name": f"t{i}", "sleep_s": 0.05})) for i in range(5)]
    worker.close_stdin()
    assert worker.wait(timeout_s=30) == 0
    assert [p.response["result"] for p in pending if p.response] == [f"t{i}" for i in range(5)]


def test_a_second_signal_exits_at_once(slow_worker: Path, start_worker: WorkerFactory) -> None:
    worker = start_worker(slow_worker)
    worker.submit(make_request({"name": "stuck", "sleep_s": 600}))
    worker.wait_for_stderr("started stuck")
    worker.terminate()
    worker.wait_for_stderr("received SIGTERM")
    worker.process.send_signal(signal.SIGINT)
    assert worker.wait(timeout_s=5) == 128 + signal.SIGINT


def test_run_once_serves_exactly_one_task_and_exits_0(slow_worker: Path, start_worker: WorkerFactory) -> None:
    worker = start_worker(slow_worker, "--once")
    first = worker.submit(make_request({"name": "only", "sleep_s": 0}))
    assert worker.wait(timeout_s=10) == 0  # stdin still open: it stops after one task by itself
    assert first.response is not None and first.response["result"] == "only"
    assert worker.status_lines == [{"status": "ready"}]


EXIT_WORKER = """
import atexit, sys, threading
from pathlib import Path
from runqy import task, {call}

OUT = Path.cwd()
kept = open(OUT / "kept.txt", "w")  # held by the module until the interpreter exits, never flushed by the code
atexit.register(lambda: (OUT / "atexit.txt").write_text("ran"))


def finish_late(text):
    (OUT / "thread.txt").write_text(text)


@task
def handle(payload):
    kept.write(payload)
    late = threading.Timer(0.2, finish_late, [payload])  # still running after the answer
    late.daemon = False  # not inherited from the task's thread: the interpreter must wait for it
    late.start()
    return "written"

if __name__ == "__main__":
    {call}()
"""


@pytest.mark.parametrize("call", ["run_once", "run"])
def test_an_exit_keeps_every_flush_atexit_handler_and_thread(
    write_worker: Callable[[str], Path], start_worker: WorkerFactory, tmp_path: Path, call: str
) -> None:
    # What the interpreter's teardown does for the worker's own code must all still happen after
    # the answer: a module's unclosed file flushed, atexit handlers run, non-daemon threads joined.
    # One-shot, and at the end of stdin.
    worker = start_worker(write_worker(EXIT_WORKER.format(call=call)))
    answer = worker.submit(make_request("data"))
    worker.close_stdin()
    assert worker.wait(timeout_s=10) == 0
    assert answer.response is not None and answer.response["result"] == "written"
    assert worker.status_lines == [{"status": "ready"}]
    written = {name: (tmp_path / name).read_text() for name in ("kept.txt", "thread.txt", "atexit.txt")}
    assert written == {"kept.txt": "data", "thread.txt": "data", "atexit.txt": "ran"}


class _RecordingHost:
    """The runner's own stdin host, keeping the read function it is handed, as its threads do."""

    def __init__(self, host: StdinHost) -> None:
        self._host = host
        self.runs_what_it_reads = host.runs_what_it_reads
        self.read: ReadChunk | None = None

    def host(self, stdin: HostedStdin) -> None:
        self.read = stdin.read
        self._host.host(stdin)

    def stop_hosting(self) -> None:
        self._host.stop_hosting()


@pytest.mark.parametrize("runner_name", ["sequential", "thread"])
def test_a_read_begun_as_serving_stops_returns_at_once_on_a_quiet_stdin(runner_name: str) -> None:
    """A thread that took the read function just before serving stopped may call it once more.

    By then serving has made stdin blocking again; with stdin open and quiet, that read
    must not wait on it, or closing the runner would wait for that thread forever.
    """
    registry = Registry()
    registry.task(lambda payload: payload)
    runner = RunqySettings(runner_cls=runner_name).build_runner()
    runner.start(registry)
    recording = _RecordingHost(runner.stdin_host())  # type: ignore[arg-type]
    runner.stdin_host = lambda: recording  # type: ignore[method-assign]
    stdin_r, stdin_w = os.pipe()  # stays open and quiet: the Go worker sends nothing more
    stdout_r, stdout_w = os.pipe()
    interrupt_r, interrupt_w = os.pipe()

    def signal_once_ready() -> None:
        with os.fdopen(os.dup(stdout_r), "rb") as answers:
            assert answers.readline() == READY_LINE
        os.kill(os.getpid(), signal.SIGTERM)

    signaller = threading.Thread(target=signal_once_ready)
    signaller.start()
    assert Server(runner, ProtocolChannel(stdout_w), shutdown_timeout_s=1).serve(stdin_r) == 0
    signaller.join()
    assert os.get_blocking(stdin_r)
    late: list[object] = []
    reader = threading.Thread(target=lambda: late.append(recording.read(interrupt_r)), daemon=True)  # type: ignore[misc]
    reader.start()
    reader.join(timeout=5)
    try:
        assert not reader.is_alive(), "a late read waited on stdin"
        assert late == [[]]
    finally:
        os.close(stdin_w)  # ends a read that waits, so no thread outlives the test
        runner.close()
        for fd in (stdin_r, stdout_r, interrupt_r, interrupt_w):
            os.close(fd)
