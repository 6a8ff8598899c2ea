"""RunqySettings: every knob of a worker, resolved from code, environment and TOML files.

Precedence, highest first: values given in code, ``RUNQY_*`` environment variables
(nested fields with ``__``), the TOML file named by ``RUNQY_CONFIG``, ``[tool.runqy]``
in the ``pyproject.toml`` of the current directory (the worker's repository when the
Go worker starts it), then the defaults below.

The settings are frozen dataclasses, declared here once: each field's type, default,
bounds and description. pydantic validates them and pydantic-settings reads their
sources, each through a model made from these declarations
(:mod:`runqy.config.validation`, :mod:`runqy.config.sources`). Both are imported only
when needed: values that validation would keep as they are are checked here without
them (:mod:`runqy.config.as_given`), since importing pydantic alone takes longer than
a runqy-python worker takes to start, and most workers give nothing else.
"""

# No ``from __future__ import annotations``: the fields' types are read at run time
# (dataclasses.Field.type) to check values without evaluating annotations.

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runqy.attempts import RetryPolicy, resolve_exception
from runqy.config.as_given import validate_fields
from runqy.config.catalog import BUILTIN_RUNNERS, import_runner
from runqy.config.checks import check_settings
from runqy.errors import ConfigError

if TYPE_CHECKING:
    from runqy.runners.base import Runner

__all__ = [
    "CONFIG_ENV_VAR",
    "RUNNER_ALIASES",
    "RunnerOptions",
    "RunqySettings",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "env_var",
    "resolve_runner_class",
]

#: The environment variable naming a TOML settings file.
CONFIG_ENV_VAR = "RUNQY_CONFIG"
#: Environment variables of settings start with this; nested fields are joined by the delimiter.
ENV_PREFIX = "RUNQY_"
ENV_NESTED_DELIMITER = "__"


def env_var(dotted: str) -> str:
    """The environment variable of a setting: ``runner.max_threads`` -> ``RUNQY_RUNNER__MAX_THREADS``."""
    return f"{ENV_PREFIX}{dotted.replace('.', ENV_NESTED_DELIMITER)}".upper()


#: Short names accepted by ``runner_cls``, and the class each stands for.
RUNNER_ALIASES: dict[str, str] = {alias: spec.path for alias, spec in BUILTIN_RUNNERS.items()}


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None) -> Any:
    """A field's default and the bounds its value must keep (pydantic's ``ge``, ``gt`` and ``le``)."""
    bounds = {name: bound for name, bound in (("ge", ge), ("gt", gt), ("le", le)) if bound is not None}
    return field(default=default, metadata=bounds)


@dataclass(frozen=True, kw_only=True)
class RunnerOptions:
    """Options of the runner itself: the ``[tool.runqy.runner]`` table, ``RUNQY_RUNNER__*`` in the environment.

    Built with wrong values, it raises pydantic's ``ValidationError``; values of the
    wrong type that pydantic converts (``"4"`` for 4) are converted.
    """

    # The docstrings below describe each option, read on demand (runqy.config.descriptions).
    max_threads: int | None = bounded(None, ge=1)
    """Threads of the thread runner (default ``min(32, cpu_count + 4)``)."""
    num_processes: int | None = bounded(None, ge=1)
    """Child processes of the process and hybrid runners (default: physical cores)."""
    threads_per_process: int | None = bounded(None, ge=1)
    """Threads in each child of the hybrid runner."""
    start_method: Literal["spawn", "forkserver"] = "spawn"
    """How child processes are started; never set globally for the process."""
    max_concurrency: int = bounded(1000, ge=1)
    """Coroutines the async runner keeps running at once on its event loop."""

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True, kw_only=True)
class RunqySettings:
    """Every setting of a runqy worker. Unknown keys are errors, never silently ignored.

    Built by :func:`runqy.config.resolve.resolve_settings` from every source. Built
    directly, its values are validated as pydantic validates them (``ValidationError``)
    and the whole configuration is checked (:class:`ConfigError`,
    :class:`~runqy.errors.ConfigWarning`), as through every source.
    """

    # The docstrings below describe each setting (``runqy run --help``), read on demand.
    runner_cls: str | None = None
    """Which runner runs the tasks: an alias, a class name or ``"package.module:Class"``."""
    python_workers: int | None = bounded(None, ge=1)
    """A thread pool of N when no runner is named (``RUNQY_PYTHON_WORKERS``, as in runqy-python)."""
    task_timeout_s: float | None = bounded(None, gt=0)
    """Longest time one attempt of a task may run; None for no limit."""
    require_hard_timeout: bool = False
    """A timed-out task must be killed, not abandoned: only runners with hard timeouts (process) accept it."""
    max_retries: int = bounded(0, ge=0)
    """Local retries of a retryable failure (RetryableError, timeout, crash) before answering."""
    retry_backoff_s: float = bounded(0.1, ge=0)
    """First backoff between local retries; doubles each time, with jitter."""
    retry_exceptions: list[str] = field(default_factory=list)
    """Exceptions retried like RetryableError: builtins (``"ConnectionError"``) or ``"package.module.Class"``."""
    shutdown_timeout_s: float = bounded(8.0, ge=0)
    """On SIGTERM/SIGINT, how long running tasks may take to finish (the worker kills us after 10 s)."""
    max_tasks_per_child: int | None = bounded(None, ge=1)
    """Recycle a child process after this many tasks (process and hybrid runners)."""
    max_memory_per_child_mb: int | None = bounded(None, ge=1)
    """Recycle a child whose memory (with its descendants) exceeds this (process and hybrid runners)."""
    batch_size: int | None = bounded(None, ge=1)
    """Calls of the handler take lists of up to this many payloads; ``@task(batch_size=...)`` wins."""
    batch_max_wait_ms: float | None = bounded(None, ge=0)
    """How long a batch short of batch_size may wait for more tasks (default 0); ``@task(max_wait_ms=...)`` wins."""
    max_abandoned_threads: int = bounded(16, ge=0)
    """Timed-out threads left running before a warning (thread) or a recycle (hybrid)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of runqy's own log lines on stderr."""
    log_format: Literal["text", "json"] = "text"
    """runqy's stderr: ``text`` lines, or ``json``, one object per line for log pipelines."""
    log_every_task: bool = False
    """A log line for every task, not only for those that failed, were retried, timed out or ran slow."""
    slow_task_s: float | None = bounded(None, gt=0)
    """A task that ran at least this long gets a log line; None for no such lines."""
    stats_interval_s: float | None = bounded(None, gt=0)
    """Log a stats line this often; None (the default) for none."""
    metrics_port: int | None = bounded(None, ge=0, le=65535)
    """Serve Prometheus metrics on ``/metrics`` at this port (0: any free one; needs ``runqy[metrics]``)."""
    metrics_address: str = "0.0.0.0"
    """The address the metrics endpoint listens on."""
    spin_wait_us: float = bounded(0.0, ge=0)
    """Poll this long for the next request or answer before sleeping, while waits are that short; for idle cores."""
    runner: RunnerOptions = field(default_factory=RunnerOptions)
    """Options of the runner itself: the ``[tool.runqy.runner]`` table."""

    def __post_init__(self) -> None:
        validate_fields(self)
        for name in self.retry_exceptions:
            try:
                resolve_exception(name)
            except ValueError as exc:
                raise ConfigError(f"retry_exceptions: {exc}", fields=("retry_exceptions",)) from None
        # Checked while the settings are built, so a bad combination fails before any runner starts.
        for dotted, value in check_settings(self).items():
            name, _, option = dotted.partition(".")
            if option:
                value = replace(self.runner, **{option: value})
            # Frozen for its users; filling in a derived value belongs to its construction.
            object.__setattr__(self, name, value)

    @property
    def runner_name(self) -> str:
        """The runner to use: ``runner_cls`` if set, else a thread pool when ``python_workers`` > 1."""
        if self.runner_cls is not None:
            return self.runner_cls
        return "thread" if (self.python_workers or 1) > 1 else "sequential"

    def runner_class(self) -> "type[Runner]":
        """Import the runner class; a :class:`ConfigError` when it is not available in this installation."""
        return resolve_runner_class(self.runner_name)

    def build_runner(self) -> "Runner":
        return self.runner_class().from_settings(self)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            self.task_timeout_s,
            self.max_retries,
            self.retry_backoff_s,
            self.max_abandoned_threads,
            tuple(resolve_exception(name) for name in self.retry_exceptions),
        )


def config_file_path() -> Path | None:
    """The file named by ``RUNQY_CONFIG``, made absolute; an error when it names nothing."""
    name = os.environ.get(CONFIG_ENV_VAR)
    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"{CONFIG_ENV_VAR}={name}: no such file; point it at a TOML file like those in configs/")
    return path.resolve()


def resolve_runner_class(name: str) -> "type[Runner]":
    """Turn ``runner_cls`` (alias, class name or ``module:Class``) into a Runner subclass."""
    return import_runner(name)
