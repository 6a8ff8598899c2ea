"""SequentialRunner: one task at a time, as runqy-python always did; the default."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, ClassVar

from runqy.app import BoundHandler, Registry, failure_response
from runqy.attempts import AttemptEngine, RetryPolicy
from runqy.protocol import TaskRequest
from runqy.runners.base import Capabilities, Reply, Runner

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.settings import RunqySettings

__all__ = ["SequentialRunner"]


class SequentialRunner(Runner):
    """Runs tasks one after another on a single thread, in the order they arrived.

    The serving loop keeps reading stdin meanwhile, so the Go worker is never blocked;
    a task timeout abandons the stuck attempt and moves on.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        hard_timeout=False, shares_load_context=True, cpu_parallel=False
    )

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        super().__init__()
        self.policy = policy or RetryPolicy()
        # Batches of tasks, in arrival order; None stops the thread.
        self._tasks: queue.SimpleQueue[list[tuple[TaskRequest, Reply]] | None] = queue.SimpleQueue()
        self._handler: BoundHandler | None = None
        self._engine: AttemptEngine | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: RunqySettings) -> Self:
        return cls(settings.retry_policy())

    @property
    def capacity(self) -> int:
        return 1

    def start(self, registry: Registry) -> None:
        if self._thread is not None:
            return
        self._handler = registry.bind()
        self._engine = AttemptEngine(self._handler, self.policy)
        self._thread = threading.Thread(target=self._work, args=(self._engine,), name="runqy-sequential", daemon=True)
        self._thread.start()

    def submit(self, request: TaskRequest, reply: Reply) -> None:
        self._tasks.put([(request, reply)])

    def submit_many(self, tasks: list[tuple[TaskRequest, Reply]]) -> None:
        self._tasks.put(tasks)

    @property
    def abandoned_attempts(self) -> int:
        return self._engine.abandoned if self._engine is not None else 0

    def _work(self, engine: AttemptEngine) -> None:
        while (batch := self._tasks.get()) is not None:
            for request, reply in batch:
                try:
                    response = engine.run(request)
                except BaseException as exc:  # noqa: BLE001 - the task must be answered whatever broke
                    response = failure_response(request, exc)
                reply(response)

    def close(self, timeout_s: float | None = None) -> None:
        if self._thread is None:
            return
        self._tasks.put(None)
        self._thread.join(timeout_s)
        self._thread = None
        if self._engine is not None:
            self._engine.close()
        if self._handler is not None:
            self._handler.close()
