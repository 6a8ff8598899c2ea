"""SequentialRunner: one task at a time, as runqy-python always did; the default."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from runqy.app import BoundHandler, Registry
from runqy.attempts import RetryPolicy
from runqy.errors import RunnerClosed
from runqy.protocol import TaskRequest
from runqy.runners.base import Capabilities, Reply, Runner
from runqy.runners.thread import ThreadPool

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.settings import RunqySettings

__all__ = ["SequentialRunner"]


class SequentialRunner(Runner):
    """Runs tasks one after another on a single thread, in the order they arrived.

    The serving loop keeps reading stdin meanwhile, so the Go worker is never blocked;
    a task timeout abandons the stuck attempt and moves on, on a fresh thread.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        hard_timeout=False, shares_load_context=True, cpu_parallel=False
    )

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        super().__init__()
        self.policy = policy or RetryPolicy()
        self._handler: BoundHandler | None = None
        self._pool: ThreadPool | None = None

    @classmethod
    def from_settings(cls, settings: RunqySettings) -> Self:
        return cls(settings.retry_policy())

    @property
    def capacity(self) -> int:
        return 1

    def start(self, registry: Registry) -> None:
        if self._pool is not None:
            return
        self._handler = registry.bind()
        # A pool of one thread is exactly sequential: one queue, in order, one task at a time.
        self._pool = ThreadPool(self._handler, self.policy, max_threads=1, name="runqy-sequential")

    def submit(self, request: TaskRequest, reply: Reply) -> None:
        if self._pool is None:
            raise RunnerClosed(f"task {request.task_id} submitted to a runner that is not started")
        self._pool.submit(request, reply)

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        if self._pool is None:
            raise RunnerClosed(f"{len(tasks)} task(s) submitted to a runner that is not started")
        self._pool.submit_many(tasks)

    @property
    def abandoned_attempts(self) -> int:
        return self._pool.engine.abandoned if self._pool is not None else 0

    def close(self, timeout_s: float | None = None) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close(timeout_s)
        if self._handler is not None:
            self._handler.close()
