"""SequentialRunner: one task at a time, as runqy-python always did; the default."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

from runqy.app import BoundHandler, Registry
from runqy.attempts import RetryPolicy
from runqy.inline import InlineThread
from runqy.protocol import TaskRequest
from runqy.runners.base import Reply
from runqy.runners.thread import PooledRunner

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.config.settings import RunqySettings

__all__ = ["SequentialRunner"]

log = logging.getLogger("runqy")


class SequentialRunner(PooledRunner):
    """Runs tasks one after another on a single thread, in the order they arrived.

    Without a task timeout, ``@load`` and every task run on one and the same thread
    (:class:`~runqy.inline.InlineThread`) for the life of the runner, as in
    runqy-python 0.2.2, so thread-affine objects made by ``@load`` work. The serving
    loop keeps reading stdin meanwhile, so the Go worker is never blocked. With a task
    timeout (or an ``async def`` or batch handler) tasks run on a pool of one thread: a
    timed-out attempt is abandoned and the work moves on, on a fresh thread.
    """

    thread_name: ClassVar[str] = "runqy-sequential"

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        # A pool of one thread is exactly sequential: one queue, in order, one task at a time.
        super().__init__(1, policy)
        self._inline: InlineThread | None = None

    @classmethod
    def from_settings(cls, settings: RunqySettings) -> Self:
        return cls(settings.retry_policy())

    def start(self, registry: Registry) -> None:
        if self._pool is not None:
            return
        super().start(registry)  # @load runs on the inline thread: see _bind
        inline, pool = self._inline, self._started()
        assert inline is not None
        if pool.engine.untimed and pool.engine.handler.batch is None:
            inline.run_tasks_with(pool.engine.run)  # the pool itself never starts a thread
        else:
            # Nothing may abandon the inline thread: timed attempts run on the pool.
            self._inline = None
            inline.close()

    def _bind(self, registry: Registry) -> BoundHandler:
        inline = InlineThread(self.thread_name)
        try:
            handler = inline.call(registry.bind)
        except BaseException:
            inline.close()
            raise
        self._inline = inline
        return handler

    def submit(self, request: TaskRequest, reply: Reply) -> None:
        self.submit_many([(request, reply)])

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        if self._inline is not None:
            self._inline.submit_many(tasks)
        else:
            super().submit_many(tasks)

    def inline_thread(self) -> InlineThread | None:
        return self._inline

    def close(self, timeout_s: float | None = None) -> None:
        inline, self._inline = self._inline, None
        if inline is not None and not inline.close(timeout_s):
            log.warning("a task is still running after %gs; leaving its thread behind", timeout_s)
        super().close(timeout_s)
