"""InFlight: one answer per accepted task, and a reader held back while too many are open."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import pytest
from harness import wait_until

from runqy.observe.report import collect_stats
from runqy.observe.telemetry import Telemetry
from runqy.protocol import ProtocolChannel, TaskRequest, TaskResponse
from runqy.serve import DUPLICATE_REPLY, InFlight


@pytest.fixture
def channel() -> Iterator[tuple[ProtocolChannel, int]]:
    """A channel writing into a real pipe, and the pipe's read end."""
    read_fd, write_fd = os.pipe()
    channel = ProtocolChannel(write_fd)
    yield channel, read_fd
    channel.close(5)
    os.close(read_fd)
    os.close(write_fd)


def read_lines(fd: int, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < count:
        data += os.read(fd, 1 << 16)
    return data.splitlines()


def test_a_late_second_answer_is_dropped(channel: tuple[ProtocolChannel, int]) -> None:
    pipe, read_fd = channel
    telemetry = Telemetry()
    inflight = InFlight(pipe, limit=10, observer=telemetry)
    reply = inflight.admit(TaskRequest("t1"))
    assert reply is not None
    assert inflight.give_up("worker is stopping") == 1
    reply(TaskResponse("t1", "late result"))  # the handler finished after the give-up
    reply2 = inflight.admit(TaskRequest("t2"))
    assert reply2 is not None
    reply2(TaskResponse("t2", "ok"))
    lines = read_lines(read_fd, 2)
    assert [line.split(b",")[0] for line in lines] == [b'{"task_id":"t1"', b'{"task_id":"t2"']
    assert b"worker is stopping" in lines[0] and b"late result" not in b"".join(lines)
    tally = telemetry.tally()
    assert (tally.late_replies, tally.duplicate_replies) == (1, 0)


def test_a_runner_answering_twice_is_logged_as_a_bug_and_counted_in_the_stats(
    channel: tuple[ProtocolChannel, int], caplog: pytest.LogCaptureFixture
) -> None:
    pipe, read_fd = channel
    telemetry = Telemetry()
    inflight = InFlight(pipe, limit=10, observer=telemetry)
    reply = inflight.admit(TaskRequest("t1"))
    assert reply is not None
    reply(TaskResponse("t1", "first"))
    reply(TaskResponse("t1", "second"))
    assert read_lines(read_fd, 1) == [b'{"task_id":"t1","result":"first","error":null,"retry":false}']
    assert f"task t1 {DUPLICATE_REPLY}" in caplog.text
    stats = collect_stats(telemetry.tally(), 1.0, None, len(inflight))
    assert (stats.duplicate_replies, stats.late_replies) == (1, 0)
    assert stats.line().endswith(" duplicate_replies 1")


def test_the_reader_waits_at_the_limit_until_half_are_answered(channel: tuple[ProtocolChannel, int]) -> None:
    pipe, _ = channel
    inflight = InFlight(pipe, limit=4)
    replies = [inflight.admit(TaskRequest(f"t{i}")) for i in range(4)]
    open_when_resumed: list[int] = []

    def read_more() -> None:
        inflight.wait_for_room()
        open_when_resumed.append(len(inflight))

    reader = threading.Thread(target=read_more)
    reader.start()
    for i, reply in enumerate(replies):
        assert reply is not None
        reply(TaskResponse(f"t{i}"))
    reader.join(10)
    assert not reader.is_alive()
    # It may only go on once no more than half the limit is open, whenever it woke up.
    assert open_when_resumed[0] <= 2


def test_below_the_limit_the_reader_does_not_wait(channel: tuple[ProtocolChannel, int]) -> None:
    pipe, _ = channel
    inflight = InFlight(pipe, limit=4)
    for i in range(3):
        inflight.admit(TaskRequest(f"t{i}"))
    inflight.wait_for_room()  # returns at once: three open, the limit is four
    assert len(inflight) == 3


def test_shutdown_releases_a_waiting_reader_and_refuses_new_tasks(channel: tuple[ProtocolChannel, int]) -> None:
    pipe, _ = channel
    inflight = InFlight(pipe, limit=2)
    for i in range(2):
        inflight.admit(TaskRequest(f"t{i}"))
    reader = threading.Thread(target=inflight.wait_for_room)
    reader.start()
    inflight.close()
    reader.join(10)
    assert not reader.is_alive()
    assert inflight.admit(TaskRequest("late")) is None


def test_shutdown_waits_for_an_answer_claimed_but_not_yet_written() -> None:
    """Between the claim of a task and its line on stdout, the task is not answered yet.

    The answer's in-place write blocks on a full pipe (the Go worker reading slowly):
    ``wait_idle`` must not report the worker idle meanwhile, or shutdown would flush,
    exit, and lose the line.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    filler = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filler += os.write(write_fd, b"x" * 4096)
    os.set_blocking(write_fd, True)
    pipe = ProtocolChannel(write_fd)
    inflight = InFlight(pipe, limit=10)
    inflight.answer_in_place = True
    reply = inflight.admit(TaskRequest("t1"))
    assert reply is not None
    answering = threading.Thread(target=reply, args=(TaskResponse("t1", "ok"),))
    answering.start()
    try:
        wait_until(lambda: len(inflight) == 0, "the task claimed by its answer")
        assert not inflight.wait_idle(0.2)  # its line is stuck in the write
    finally:
        data = b""
        while b'"t1"' not in data:
            data += os.read(read_fd, 1 << 16)
        answering.join()
    assert inflight.wait_idle(5.0)
    assert len(data) > filler
    pipe.close(5)
    os.close(read_fd)
    os.close(write_fd)
