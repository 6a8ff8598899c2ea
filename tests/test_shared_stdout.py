"""Answers written to stdout by the process runner's children: whole lines, each task once.

The unit tests give a real spawned child a :class:`ChildStdout` over a real pipe; the
end-to-end ones drive a real worker (``python worker.py``) whose stdout is a pipe the
test reads, as the Go worker does.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from harness import WAIT_S, wait_until
from runner_params import CLEAN_ENV

from runqy.shared_stdout import ChildStdout, SharedStdout

pytestmark = pytest.mark.timeout(60)

SPAWN = multiprocessing.get_context("spawn")


def _write_when_told(stdout: ChildStdout, orders: Connection) -> None:
    """Child: write an answer for each seq the test sends, and report whether it was written."""
    while (seq := orders.recv()) is not None:
        orders.send(stdout.write_answer(seq, b'{"task_id":"t%d"}\n' % seq))


def _start_writer(shared: SharedStdout) -> tuple[multiprocessing.process.BaseProcess, Connection, ChildStdout]:
    ours, theirs = SPAWN.Pipe()
    handle = shared.for_child(SPAWN)
    child = SPAWN.Process(target=_write_when_told, args=(handle, theirs), daemon=True)
    child.start()
    theirs.close()
    return child, ours, handle


def test_a_revoked_child_writes_no_answer_and_the_parent_learns_the_last_it_wrote(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    shared = SharedStdout(write_fd)
    child, orders, handle = _start_writer(shared)
    try:
        for seq in (1, 2, 3):
            orders.send(seq)
            assert orders.recv() is True
        assert shared.revoke(handle) == 3
        orders.send(4)
        assert orders.recv() is False, "a revoked child must send its answer through the parent"
        assert os.read(read_fd, 4096).splitlines() == [b'{"task_id":"t%d"}' % seq for seq in (1, 2, 3)]
        shared.allow(handle)
        orders.send(5)
        assert orders.recv() is True
        assert os.read(read_fd, 4096) == b'{"task_id":"t5"}\n'
    finally:
        orders.send(None)
        child.join(WAIT_S)


def test_a_child_killed_while_holding_the_lock_releases_it(pipe: tuple[int, int]) -> None:
    _, write_fd = pipe
    os.set_blocking(write_fd, False)
    while True:  # fill the pipe: the child's next answer blocks in its write, holding the lock
        try:
            os.write(write_fd, b"x" * 4096)
        except BlockingIOError:
            break
    os.set_blocking(write_fd, True)
    shared = SharedStdout(write_fd)
    child, orders, handle = _start_writer(shared)
    orders.send(1)
    lock_fd = handle.lock_fd
    wait_until(lambda: _held_by_another_process(lock_fd), "the child holds the lock, blocked in its write")
    os.kill(child.pid, signal.SIGKILL)
    child.join(WAIT_S)
    # The kernel released the dead child's lock: the parent takes it at once, and the
    # answer whose write never finished counts as not written.
    assert shared.revoke(handle) == 0


def _held_by_another_process(lock_fd: int) -> bool:
    try:
        fcntl.lockf(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1)
    except OSError:
        return True
    fcntl.lockf(lock_fd, fcntl.LOCK_UN, 1)
    return False


def test_only_a_pipe_is_shared_with_children(pipe: tuple[int, int]) -> None:
    with tempfile.TemporaryFile() as regular:
        assert SharedStdout.of_pipe(regular.fileno()) is None  # a file's writes are not atomic as a pipe's are
    assert isinstance(SharedStdout.of_pipe(pipe[1]), SharedStdout)


# --- a real worker -------------------------------------------------------------------------

WORKER = """
from runqy import run, task

@task
def handle(payload):
    if payload["size"]:
        return "x" * payload["size"]  # too long for a child to write: its line goes through the parent
    return payload["n"]

run(runner_cls="process", task_timeout_s={timeout!r}, runner={{"num_processes": {processes}}})
"""


def _script(folder: Path, *, timeout: float | None = None, processes: int = 2) -> list[str]:
    """The command that starts a process-runner worker written in ``folder``."""
    (folder / "worker.py").write_text(WORKER.format(timeout=timeout, processes=processes))
    return [sys.executable, str(folder / "worker.py")]


Start = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start a worker with pipes and read its ready line; any still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def run(*, timeout: float | None = None, processes: int = 2) -> subprocess.Popen[bytes]:
        command = _script(tmp_path, timeout=timeout, processes=processes)
        worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp_path, env=CLEAN_ENV)
        started.append(worker)
        assert worker.stdout is not None
        assert json.loads(worker.stdout.readline()) == {"status": "ready"}
        return worker

    yield run
    for worker in started:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _request(n: int, size: int = 0) -> bytes:
    return json.dumps({"task_id": f"t{n}", "payload": {"n": n, "size": size}}).encode() + b"\n"


def _send(worker: subprocess.Popen[bytes], requests: list[bytes]) -> None:
    """Write the requests, then close stdin, from a thread: as the Go worker, the test reads stdout meanwhile."""

    def write() -> None:
        assert worker.stdin is not None
        worker.stdin.write(b"".join(requests))
        worker.stdin.close()

    threading.Thread(target=write, daemon=True).start()


def _answers(worker: subprocess.Popen[bytes], count: int) -> list[dict[str, object]]:
    """Read ``count`` lines, each of which must be a whole JSON response."""
    assert worker.stdout is not None
    lines = [worker.stdout.readline() for _ in range(count)]
    return [json.loads(line) for line in lines]


def test_long_lines_from_the_parent_and_answers_from_children_never_interleave(start: Start) -> None:
    worker = start()
    # Every tenth result is 20 KB, written by the parent while children write the others;
    # the reader falls behind the writers, so the pipe fills in the middle of long writes.
    requests = [_request(n, 20_000 if n % 10 == 0 else 0) for n in range(3000)]
    _send(worker, requests)
    answers = _answers(worker, len(requests))
    assert worker.wait(WAIT_S) == 0
    assert Counter(answer["task_id"] for answer in answers) == Counter(f"t{n}" for n in range(3000))
    for answer in answers:
        n = int(str(answer["task_id"])[1:])
        assert answer["error"] is None
        assert answer["result"] == ("x" * 20_000 if n % 10 == 0 else n)


def test_an_answer_stuck_on_a_full_stdout_past_its_timeout_is_answered_once_by_its_child(start: Start) -> None:
    timeout_s = 0.3
    worker = start(timeout=timeout_s, processes=1)
    # Far more answers than the pipe holds: the child blocks writing one while nothing reads.
    count = 3000
    _send(worker, [_request(n) for n in range(count)])
    # Let the blocked answer's task timeout pass: the parent must find its line written, not
    # answer it as timed out as well (and must not kill the child for it).
    time.sleep(timeout_s * 3)
    answers = _answers(worker, count)
    assert worker.wait(WAIT_S) == 0
    assert Counter(answer["task_id"] for answer in answers) == Counter(f"t{n}" for n in range(count))
    assert [answer for answer in answers if answer["error"] is not None] == []


def test_no_answer_precedes_the_ready_line_when_requests_come_before_it(tmp_path: Path) -> None:
    command = _script(tmp_path)
    requests = b"".join(_request(n) for n in range(20))
    for _ in range(5):  # the children are ready before the ready line is written: a race each time
        done = subprocess.run(command, input=requests, capture_output=True, cwd=tmp_path, env=CLEAN_ENV, timeout=WAIT_S)
        lines = done.stdout.splitlines()
        assert json.loads(lines[0]) == {"status": "ready"}, lines[:3]
        assert sorted(json.loads(line)["task_id"] for line in lines[1:]) == sorted(f"t{n}" for n in range(20))
