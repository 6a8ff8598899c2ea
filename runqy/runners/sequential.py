"""SequentialRunner: one task at a time, as runqy-python always did; the default."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from runqy.attempts import RetryPolicy
from runqy.runners.thread import PooledRunner

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.config.settings import RunqySettings

__all__ = ["SequentialRunner"]


class SequentialRunner(PooledRunner):
    """Runs tasks one after another on a single thread, in the order they arrived.

    The serving loop keeps reading stdin meanwhile, so the Go worker is never blocked;
    a task timeout abandons the stuck attempt and moves on, on a fresh thread.
    """

    thread_name: ClassVar[str] = "runqy-sequential"

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        # A pool of one thread is exactly sequential: one queue, in order, one task at a time.
        super().__init__(1, policy)

    @classmethod
    def from_settings(cls, settings: RunqySettings) -> Self:
        return cls(settings.retry_policy())
