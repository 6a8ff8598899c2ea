"""SpinWait on a real pipe: it polls only while waits are short, and never changes what a wait returns."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable

from runqy.spin import SpinWait, in_seconds

#: Far longer than a poll of a pipe that holds data takes, even on a loaded machine.
WINDOW_S = 0.05


def poll_of(fd: int) -> Callable[[float | None], list[tuple[int, int]]]:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return in_seconds(poller)


def spinning_wait(window_s: float, read_fd: int, write_fd: int) -> SpinWait:
    """A SpinWait made to spin by waits that found data at once; the pipe is left empty."""
    os.write(write_fd, b"x")
    wait = SpinWait(window_s)
    for _ in range(4):
        wait.wait(poll_of(read_fd))
    os.read(read_fd, 1)
    assert wait.spinning
    return wait


def test_waits_that_find_something_at_once_start_the_spinning(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.write(write_fd, b"x")
    wait = SpinWait(WINDOW_S)
    assert not wait.spinning  # a worker that just started has seen no short wait yet
    for _ in range(4):
        assert wait.wait(poll_of(read_fd)) == [(read_fd, select.POLLIN)]
    assert wait.spinning


def test_waits_longer_than_the_window_stop_the_spinning(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    wait = spinning_wait(WINDOW_S, read_fd, write_fd)
    for _ in range(4):  # nothing comes: each wait lasts its whole timeout, four windows
        assert wait.wait(poll_of(read_fd), timeout_s=4 * WINDOW_S) == []
    assert not wait.spinning


def test_a_spinning_wait_returns_what_another_thread_writes(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    wait = spinning_wait(WINDOW_S, read_fd, write_fd)
    writer = threading.Thread(target=os.write, args=(write_fd, b"y"))
    writer.start()
    assert wait.wait(poll_of(read_fd)) == [(read_fd, select.POLLIN)]  # no timeout: only the write ends it
    writer.join()


def test_a_timeout_shorter_than_the_window_ends_the_wait_in_time(pipe: tuple[int, int]) -> None:
    """The process runner's loop waits until its next deadline: polling must not overrun it."""
    read_fd, write_fd = pipe
    wait = spinning_wait(30.0, read_fd, write_fd)
    started = time.monotonic()
    assert wait.wait(poll_of(read_fd), timeout_s=0.05) == []
    assert time.monotonic() - started < 10.0  # the window is 30 s


def test_a_window_of_zero_never_spins(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.write(write_fd, b"x")
    wait = SpinWait(0.0)
    for _ in range(10):
        assert wait.wait(poll_of(read_fd)) == [(read_fd, select.POLLIN)]
    assert not wait.spinning
