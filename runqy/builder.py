"""RunqyBuilder: choose a runner and its options in code, with types, and build a Worker.

The builder holds no defaults of its own: it only records the values it is given,
and those win over every other source. Anything it is not given still comes from
``RUNQY_*`` environment variables, the ``RUNQY_CONFIG`` file and ``[tool.runqy]``
in ``pyproject.toml``, exactly as for ``run()``::

    worker = RunqyBuilder().thread_runner(max_threads=8).task_timeout(30).retries(2).build()
    worker.run()

Settings are built and checked by :meth:`RunqyBuilder.settings` and
:meth:`RunqyBuilder.build`, so a bad combination fails there, not at the first task.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from runqy.app import Registry
from runqy.config.resolve import load_settings, resolve_settings
from runqy.config.settings import RunqySettings
from runqy.errors import ConfigError
from runqy.runners.base import Runner
from runqy.worker import Worker

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["RunqyBuilder"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
StartMethod = Literal["spawn", "forkserver"]


class RunqyBuilder:
    """A typed, chainable front-end over :class:`~runqy.config.settings.RunqySettings`.

    Each method records settings and returns the builder. Choosing a runner replaces
    the runner and runner options chosen before by the builder.
    """

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._runner: dict[str, Any] = {}

    def sequential_runner(self) -> Self:
        """One task at a time in this process: runqy-python's behaviour."""
        return self._choose("sequential")

    def thread_runner(self, max_threads: int | None = None) -> Self:
        """A pool of ``max_threads`` threads sharing one ``@load`` context (I/O-bound or GIL-releasing handlers)."""
        return self._choose("thread", max_threads=max_threads)

    def async_runner(self, max_concurrency: int | None = None) -> Self:
        """``async def`` tasks as coroutines on one event loop, ``max_concurrency`` at once (default 1000)."""
        return self._choose("async", max_concurrency=max_concurrency)

    def persistent_process_runner(
        self, num_processes: int | None = None, *, start_method: StartMethod | None = None
    ) -> Self:
        """``num_processes`` long-lived child processes, each running ``@load`` once; timeouts kill the task."""
        return self._choose("process", num_processes=num_processes, start_method=start_method)

    def hybrid_runner(
        self,
        num_processes: int | None = None,
        threads_per_process: int | None = None,
        *,
        start_method: StartMethod | None = None,
    ) -> Self:
        """``num_processes`` children, each with ``threads_per_process`` threads sharing its ``@load`` context."""
        return self._choose(
            "hybrid", num_processes=num_processes, threads_per_process=threads_per_process, start_method=start_method
        )

    def custom_runner(self, runner_cls: type[Runner]) -> Self:
        """A Runner subclass of your own; it must be importable by module and name (not a local class)."""
        return self._choose(f"{runner_cls.__module__}:{runner_cls.__qualname__}")

    def _choose(self, runner_cls: str, **options: Any) -> Self:
        self._values["runner_cls"] = runner_cls
        self._runner = {name: value for name, value in options.items() if value is not None}
        return self

    def task_timeout(self, seconds: float | None, *, hard: bool | None = None) -> Self:
        """Limit each attempt to ``seconds`` (None: no limit, whatever other sources say).

        ``hard=True`` requires that a timed-out task be killed rather than abandoned,
        which only the process runner can do; other runners then refuse to build.
        """
        self._values["task_timeout_s"] = seconds
        if hard is not None:
            self._values["require_hard_timeout"] = hard
        return self

    def retries(
        self,
        max_retries: int,
        backoff_s: float | None = None,
        *,
        on: Iterable[type[BaseException] | str] | None = None,
    ) -> Self:
        """Retry a retryable failure locally ``max_retries`` times, first after ``backoff_s`` (then doubling).

        ``on`` names more exceptions to treat like ``RetryableError`` (the
        ``retry_exceptions`` setting): classes defined at the top level of a module, or
        their names (``"ConnectionError"``, ``"package.module.Class"``).
        """
        self._values["max_retries"] = max_retries
        if backoff_s is not None:
            self._values["retry_backoff_s"] = backoff_s
        if on is not None:
            self._values["retry_exceptions"] = [_exception_name(exc) for exc in on]
        return self

    def recycle_children(self, *, max_tasks: int | None = None, max_memory_mb: int | None = None) -> Self:
        """Replace a child process after ``max_tasks`` tasks or above ``max_memory_mb`` of memory (process, hybrid)."""
        if max_tasks is not None:
            self._values["max_tasks_per_child"] = max_tasks
        if max_memory_mb is not None:
            self._values["max_memory_per_child_mb"] = max_memory_mb
        return self

    def max_abandoned_threads(self, count: int) -> Self:
        """Timed-out threads tolerated before a warning (thread) or a recycle of the child (hybrid)."""
        self._values["max_abandoned_threads"] = count
        return self

    def spin_wait(self, microseconds: float) -> Self:
        """Poll this long for the next request or answer before sleeping, while waits are that short (0: never)."""
        self._values["spin_wait_us"] = microseconds
        return self

    def shutdown_timeout(self, seconds: float) -> Self:
        """On SIGTERM or end of input, how long running tasks may take to finish."""
        self._values["shutdown_timeout_s"] = seconds
        return self

    def log_level(self, level: LogLevel) -> Self:
        """Level of runqy's own log lines on stderr."""
        self._values["log_level"] = level
        return self

    def overrides(self) -> dict[str, Any]:
        """The values this builder sets, shaped as keyword arguments of RunqySettings."""
        values = dict(self._values)
        if self._runner:
            values["runner"] = dict(self._runner)
        return values

    def settings(self) -> RunqySettings:
        """Resolve and check the settings: these values over env, RUNQY_CONFIG and pyproject.

        Does not import the runner; :meth:`build` does. Raises :class:`~runqy.errors.ConfigError`.
        """
        return resolve_settings(self.overrides())

    def describe(self) -> dict[str, Any]:
        """The resolved settings with the origin of each, as ``runqy config --json`` prints them."""
        from runqy.config.resolve import describe_settings

        return describe_settings(self.overrides())

    def build(self, registry: Registry | None = None) -> Worker:
        """A :class:`~runqy.worker.Worker` for ``registry`` (default: the ``@task`` handler of this process).

        Raises :class:`~runqy.errors.ConfigError` when the settings are invalid or the
        runner is not available in this installation.
        """
        return Worker(load_settings(**self.overrides()), registry)

    def __repr__(self) -> str:
        return f"RunqyBuilder({self.overrides()!r})"


def _exception_name(exc: type[BaseException] | str) -> str:
    """The name ``retry_exceptions`` knows an exception by: a builtin's own, else ``module.Class``."""
    if isinstance(exc, str):
        return exc
    if "." in exc.__qualname__:
        raise ConfigError(
            f"retries(on=...): {exc.__module__}.{exc.__qualname__} is not at the top level of its module, "
            "so it cannot be found by name; define it at module level",
            fields=("retry_exceptions",),
        )
    return exc.__qualname__ if exc.__module__ == "builtins" else f"{exc.__module__}.{exc.__qualname__}"
