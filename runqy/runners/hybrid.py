"""HybridRunner: ``num_processes`` persistent children, each running ``threads_per_process`` tasks on threads.

For handlers that wait on I/O most of the time but also hold the GIL or crash now and
then: threads give concurrency, processes give cores and containment. It is the
process runner with two things changed through its seam: a child takes
``threads_per_process`` tasks at once (the child runs them on the thread runner's
:class:`~runqy.runners.thread.ThreadPool`, one attempt per task message), and
timeouts are thread-level inside the child (the attempt is abandoned and retried,
possibly in another child). A child whose abandoned threads exceed
``max_abandoned_threads`` asks to be recycled: it gets no new tasks, and is replaced
once its running ones are answered. As a backstop, a child that does not answer a
timed-out attempt at all (its interpreter is stuck in C code holding the GIL) is
killed like a process-runner child, twice the timeout plus a second after dispatch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final

from runqy.attempts import RetryPolicy
from runqy.runners.base import Capabilities
from runqy.runners.process import PersistentProcessRunner

if TYPE_CHECKING:
    from runqy.config.settings import RunqySettings

__all__ = ["DEFAULT_THREADS_PER_PROCESS", "HybridRunner"]

#: Threads per child when ``runner.threads_per_process`` is not set.
DEFAULT_THREADS_PER_PROCESS: Final = 4
#: Grace beyond twice the timeout before a child that never answered is killed.
_BACKSTOP_GRACE_S: Final = 1.0


class HybridRunner(PersistentProcessRunner):
    """Runs tasks on ``threads_per_process`` threads in each of ``num_processes`` persistent child processes.

    Dispatch goes to the least-loaded child. A child crash fails (and retries) only the
    tasks that child was running.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        hard_timeout=False, shares_load_context=False, cpu_parallel=True
    )

    def __init__(self, policy: RetryPolicy | None = None, *, threads_per_process: int | None = None, **options: Any):
        super().__init__(policy, **options)
        self.threads_per_process = threads_per_process or DEFAULT_THREADS_PER_PROCESS

    @classmethod
    def _options(cls, settings: RunqySettings) -> dict[str, Any]:
        return {**super()._options(settings), "threads_per_process": settings.runner.threads_per_process}

    @property
    def slots_per_child(self) -> int:
        return self.threads_per_process

    def _child_threads(self) -> int:
        return self.threads_per_process

    def _attempt_deadline(self, now: float) -> float | None:
        # The child times attempts out itself; this only catches a child that cannot.
        timeout_s = self.policy.task_timeout_s
        return None if timeout_s is None else now + 2 * timeout_s + _BACKSTOP_GRACE_S
