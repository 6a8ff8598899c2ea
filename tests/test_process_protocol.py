"""The process and hybrid runners end to end: a real worker process driven over stdin/stdout as the Go worker does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from process_helpers import DEADLINE_S, wait_for_file, wait_gone

from runqy.local.driver import LocalWorker, WorkerStartFailed, make_request

pytestmark = pytest.mark.timeout(40)

TESTS_DIR = Path(__file__).resolve().parent

# The handler lives in the script itself (__main__ in the worker), and run() is called
# unguarded at import time: children re-import the script and must not serve there.
SCRIPT = """
import misbehaving
from runqy import load, run, task

@load
def setup():
    return misbehaving.setup()

@task
def handle(payload, ctx):
    return misbehaving.handle(payload, ctx)

run(runner_cls={runner!r}, task_timeout_s={timeout!r}, runner={options!r})
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def worker_script(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "worker.py"
    path.write_text(SCRIPT.format(runner="process", timeout=0.5, options={"num_processes": 2}))
    yield path


@pytest.fixture(params=["spawn", "forkserver"])
def any_start_method_script(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    path = tmp_path / "worker.py"
    options = {"num_processes": 2, "start_method": request.param}
    path.write_text(SCRIPT.format(runner="process", timeout=0.5, options=options))
    yield path


def start(script: Path) -> LocalWorker:
    worker = LocalWorker([sys.executable, str(script)], env=_env(), cwd=str(script.parent))
    worker.wait_ready(DEADLINE_S * 3)
    return worker


def test_a_crashing_task_fails_alone_and_the_worker_keeps_serving(any_start_method_script: Path) -> None:
    with start(any_start_method_script) as worker:
        requests = [make_request({"do": "echo", "value": i}) for i in range(8)]
        requests[3] = make_request({"do": "exit", "code": 1})
        outcomes = {o.request["task_id"]: o for o in worker.run(requests, concurrency=4)}
        crashed = outcomes.pop(requests[3]["task_id"]).response
        assert crashed is not None and "exited with code 1" in crashed["error"]
        assert all(o.status == "ok" for o in outcomes.values())
        assert worker.call({"do": "echo", "value": "still here"}, DEADLINE_S)["result"]["echo"] == "still here"
        assert worker.garbage_lines == [] and worker.unmatched_responses == []
        assert worker.shutdown() == 0


def test_a_hung_task_with_a_grandchild_is_answered_soon_after_its_timeout_and_the_grandchild_dies(
    any_start_method_script: Path, tmp_path: Path
) -> None:
    mark = tmp_path / "grandchild.pid"
    with start(any_start_method_script) as worker:
        started_at = time.monotonic()
        pending = worker.submit(make_request({"do": "hang_with_grandchild", "mark": str(mark)}))
        grandchild = int(wait_for_file(mark))
        assert pending.done.wait(DEADLINE_S) and pending.response is not None
        # The 0.5 s timeout plus a margin for a busy machine; a task left to hang would take 600 s.
        assert time.monotonic() - started_at < 0.5 + 2.5
        assert "timed out" in pending.response["error"] and pending.response["retry"] is True
        assert wait_gone(grandchild)
        assert worker.call({"do": "echo", "value": 1}, DEADLINE_S)["error"] is None
        assert worker.shutdown() == 0


def test_writes_to_fd_1_in_a_child_never_reach_the_protocol_stream(worker_script: Path) -> None:
    with start(worker_script) as worker:
        outcomes = list(worker.run([make_request({"do": "noise"}) for _ in range(6)], concurrency=3))
        assert [o.response["result"] for o in outcomes if o.response] == ["quiet"] * 6
        assert worker.shutdown() == 0
    assert worker.garbage_lines == []
    assert "noise from fd 1" in worker.stderr_lines and "noise from print()" in worker.stderr_lines


def test_a_result_too_big_for_the_worker_becomes_an_error(worker_script: Path) -> None:
    with start(worker_script) as worker:
        response = worker.call({"do": "huge", "mb": 11}, DEADLINE_S)
        assert "MiB" in response["error"] and response["result"] is None
        assert worker.call({"do": "echo", "value": 2}, DEADLINE_S)["result"]["echo"] == 2
        assert worker.shutdown() == 0


def test_a_load_failure_in_a_child_fails_start_up_with_its_error(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text(
        textwrap.dedent(
            """
            import misbehaving
            from runqy import load, task

            task(misbehaving.handle)
            load(misbehaving.failing_setup)
            """
        )
    )
    cmd = [sys.executable, "-m", "runqy", "run", str(script), "--runner", "process"]
    with LocalWorker(cmd, env=_env(), cwd=str(tmp_path)) as worker:
        with pytest.raises(WorkerStartFailed, match="the model file is missing"):
            worker.wait_ready(DEADLINE_S * 3)
        assert worker.wait() == 1


def test_hybrid_serves_concurrently_over_the_protocol(tmp_path: Path) -> None:
    script = tmp_path / "hybrid_worker.py"
    script.write_text(
        SCRIPT.format(runner="hybrid", timeout=None, options={"num_processes": 2, "threads_per_process": 2})
    )
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    with start(script) as worker:
        requests = [make_request({"do": "barrier", "dir": str(barrier), "parties": 4}) for _ in range(4)]
        outcomes = list(worker.run(requests, concurrency=4))
        assert all(o.status == "ok" for o in outcomes)
        assert len({o.response["result"]["pid"] for o in outcomes if o.response}) == 2
        assert worker.shutdown("term") == 0


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_children_exit_when_the_parent_is_killed(tmp_path: Path, start_method: str) -> None:
    mark = tmp_path / "grandchild.pid"
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            import misbehaving
            from runqy.protocol import TaskRequest
            from runqy.runners.process import PersistentProcessRunner

            if __name__ == "__main__":
                runner = PersistentProcessRunner(num_processes=2, start_method={start_method!r})
                runner.start(misbehaving.registry)
                runner.submit(TaskRequest("t", {{"do": "hang_with_grandchild", "mark": {str(mark)!r}}}), print)
                print(*runner.child_pids, flush=True)
                sys.stdin.read()
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env())
    try:
        assert parent.stdout is not None
        children = [int(pid) for pid in parent.stdout.readline().split()]
        grandchild = int(wait_for_file(mark))
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert len(children) == 2
        assert all(wait_gone(pid) for pid in [*children, grandchild])
    finally:
        parent.kill()
        parent.wait()


def test_sigterm_stops_the_worker_and_takes_children_and_grandchildren_down(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT.format(runner="process", timeout=None, options={"num_processes": 1}))
    mark = tmp_path / "grandchild.pid"
    worker = LocalWorker([sys.executable, str(script)], env={**_env(), "RUNQY_SHUTDOWN_TIMEOUT_S": "0.2"})
    with worker:
        worker.wait_ready(DEADLINE_S * 3)
        pending = worker.submit(make_request({"do": "hang_with_grandchild", "mark": str(mark)}))
        grandchild = int(wait_for_file(mark))
        child = psutil.Process(grandchild).ppid()
        assert psutil.Process(child).ppid() == worker.process.pid
        assert worker.shutdown("term") == 0
        assert pending.response is not None and pending.response["retry"] is True
        assert wait_gone(child) and wait_gone(grandchild)


def test_a_handler_children_cannot_import_fails_start_up_saying_so(tmp_path: Path) -> None:
    # Defined under the __main__ guard: the script re-imported in a child never defines it.
    script = tmp_path / "guarded.py"
    script.write_text(
        textwrap.dedent(
            """
            from runqy import run, task

            if __name__ == "__main__":
                @task
                def handle(payload):
                    return payload

                run(runner_cls="process", runner={"num_processes": 1})
            """
        )
    )
    with LocalWorker([sys.executable, str(script)], env=_env(), cwd=str(tmp_path)) as worker:
        with pytest.raises(WorkerStartFailed, match=r"a child process cannot find __main__\.handle"):
            worker.wait_ready(DEADLINE_S * 3)
        assert worker.wait() == 1


def test_a_crash_loop_makes_the_worker_exit_non_zero_so_that_it_is_restarted(worker_script: Path) -> None:
    with start(worker_script) as worker:
        for n in range(5):  # the default limit: 5 unexpected child deaths within 10 s
            response = worker.call({"do": "exit", "code": 9}, DEADLINE_S, task_id=f"crash-{n}")
            assert "exited with code 9" in response["error"]
        assert worker.wait(DEADLINE_S) == 1
    assert any("child processes died within 10s" in line for line in worker.stderr_lines)
