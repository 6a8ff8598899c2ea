"""The protocol stream shared with child processes, which then write their tasks' answers to it themselves.

A process-runner child that writes a success straight to the Go worker saves the
parent a wake-up, a read, a decode, an encode and a write per task: the parent, whose
one thread serves stdin and every child, is what limits quick tasks. Two things make
that safe:

- **Whole lines.** A write of at most ``select.PIPE_BUF`` bytes to a pipe is atomic, so
  children write only lines that short. A longer write (the parent's bursts, a long
  error) can be cut when the pipe fills, and another writer's line would land inside
  it: writers of long data and every child's write take one lock for it. The lock is
  a POSIX record lock on a file: it belongs to a process, and the kernel releases it
  when its holder dies, so a child killed at any point never leaves it held.
- **Exactly one answer.** Each child records, under that lock, the sequence number of
  the last answer it wrote (its tasks run in the order sent, so one number says which
  it wrote). Before the parent answers a child's task itself (the child timed out,
  died, or is being stopped), it revokes the child under the lock, reads that number,
  and counts every task up to it as answered: after the revocation the child writes
  nothing more, and sends its answers through the parent as before.

Only a child killed from outside (the kernel's OOM killer) between its write and the
record of it leaves an answer unrecorded; that task is then answered twice, and the
Go worker drops the second answer with a warning: never none.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import stat
import threading
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, Final

from runqy.fdio import write_all

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

__all__ = ["ChildStdout", "SharedStdout", "claimed", "share"]

#: Writes up to this size to a pipe are never interleaved with other writes.
ATOMIC_BYTES: Final = select.PIPE_BUF

# The two numbers each child shares with the parent.
_REVOKED: Final = 0
_WRITTEN: Final = 1

_claimed: SharedStdout | None = None


def claimed() -> SharedStdout | None:
    """The stream that children started from now on may write to, if this process serves one."""
    return _claimed


def share(fd: int) -> SharedStdout | None:
    """Let the children started from now on write to ``fd``, the protocol stream this process claimed.

    Returns None (and children get nothing) unless ``fd`` is a pipe.
    """
    global _claimed
    _claimed = SharedStdout.of_pipe(fd)
    return _claimed


class SharedStdout:
    """The parent's side: the stream's descriptor, the lock that keeps lines whole, and a handle per child."""

    @classmethod
    def of_pipe(cls, fd: int) -> SharedStdout | None:
        """The stream on ``fd``, or None unless it is a pipe.

        Only a pipe promises that short writes are never interleaved; a file or a terminal
        keeps every answer in this process.
        """
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None
        except OSError:
            return None
        return cls(fd)

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: Made when the first child gets a handle: a worker whose runner starts no child never needs it.
        self._lock_file: IO[bytes] | None = None
        # A record lock belongs to the process, so this process's threads exclude each other here.
        self._threads = threading.Lock()

    @property
    def has_writers(self) -> bool:
        """Whether a child process was given the stream (see :meth:`for_child`)."""
        return self._lock_file is not None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the stream: no child writes until the block ends."""
        with self._threads:
            lock_file = self._lock_file
            if lock_file is None:
                yield  # no child has it
                return
            fcntl.lockf(lock_file, fcntl.LOCK_EX, 1)
            try:
                yield
            finally:
                fcntl.lockf(lock_file, fcntl.LOCK_UN, 1)

    def write_all(self, data: bytes) -> None:
        """Write whole lines, all of them; data a write could cut holds the lock throughout. Raises OSError."""
        if len(data) <= ATOMIC_BYTES:
            os.write(self.fd, data)  # never partial: a short write to a pipe waits for room for all of it
            return
        with self.locked():
            write_all(self.fd, data)

    def for_child(self, ctx: BaseContext) -> ChildStdout:
        """A handle for a child about to start, with the numbers only that child and the parent share."""
        import ctypes
        import tempfile

        with self._threads:
            if self._lock_file is None:
                self._lock_file = tempfile.TemporaryFile()  # noqa: SIM115 - open for the life of the process
        return ChildStdout(self.fd, self._lock_file.fileno(), ctx.RawArray(ctypes.c_longlong, 2))

    def revoke(self, child: ChildStdout) -> int:
        """Make the child send its answers through this process; returns the seq of the last one it wrote (0: none)."""
        with self.locked():
            child.state[_REVOKED] = 1
            return int(child.state[_WRITTEN])

    def allow(self, child: ChildStdout) -> None:
        """Let a revoked child write its answers again (the parent no longer answers its tasks itself)."""
        child.state[_REVOKED] = 0


class ChildStdout:
    """What a child gets: the stream, the lock, and its own two numbers (revoked, last seq written).

    Pickled for a child started with spawn or forkserver, the descriptors travel with it
    (multiprocessing duplicates them into the child); a forked child inherits them.
    """

    def __init__(self, fd: int, lock_fd: int, state: Any) -> None:
        self.fd = fd
        self.lock_fd = lock_fd
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing import reduction

        return _rebuild, (reduction.DupFd(self.fd), reduction.DupFd(self.lock_fd), self.state)

    def write_answer(self, seq: int, line: bytes) -> bool:
        """Write one answer's line unless revoked, and record it; False: send it through the parent instead.

        ``line`` must be at most :data:`ATOMIC_BYTES` long. An error writing (the Go worker
        is gone) also returns False, so that the parent sees the answer and the failure.
        """
        fcntl.lockf(self.lock_fd, fcntl.LOCK_EX, 1)
        try:
            if self.state[_REVOKED]:
                return False
            try:
                os.write(self.fd, line)
            except OSError:
                return False
            self.state[_WRITTEN] = seq
            return True
        finally:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_UN, 1)


def _rebuild(fd: Any, lock_fd: Any, state: Any) -> ChildStdout:
    fds = fd.detach(), lock_fd.detach()
    for each in fds:  # the subprocesses a task starts must not hold the Go worker's stdout open
        os.set_inheritable(each, False)
    return ChildStdout(*fds, state)
