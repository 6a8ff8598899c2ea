"""RunqySettings: every knob of a worker, resolved from code, environment and TOML files.

Precedence, highest first: values given in code, ``RUNQY_*`` environment variables
(nested fields with ``__``), the TOML file named by ``RUNQY_CONFIG``, ``[tool.runqy]``
in the ``pyproject.toml`` of the current directory (the worker's repository when the
Go worker starts it), then the defaults below.

The model itself is plain pydantic; reading those sources is the business of
:mod:`runqy.config.sources` (pydantic-settings), imported only when one of them has
something to say, since importing pydantic-settings alone takes longer than a
runqy-python worker takes to start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runqy.attempts import RetryPolicy, resolve_exception
from runqy.config.catalog import BUILTIN_RUNNERS, import_runner
from runqy.config.checks import check_settings
from runqy.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

    from runqy.runners.base import Runner

__all__ = [
    "CONFIG_ENV_VAR",
    "construct_checked",
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


class RunnerOptions(BaseModel):
    """Options of the runner itself: the ``[tool.runqy.runner]`` table, ``RUNQY_RUNNER__*`` in the environment."""

    # The docstrings below describe each option, read on demand (runqy.config.descriptions).
    # Its validator is built on first use (see RunqySettings).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    max_threads: int | None = Field(default=None, ge=1)
    """Threads of the thread runner (default ``min(32, cpu_count + 4)``)."""
    num_processes: int | None = Field(default=None, ge=1)
    """Child processes of the process and hybrid runners (default: physical cores)."""
    threads_per_process: int | None = Field(default=None, ge=1)
    """Threads in each child of the hybrid runner."""
    start_method: Literal["spawn", "forkserver"] = "spawn"
    """How child processes are started; never set globally for the process."""
    max_concurrency: int = Field(default=1000, ge=1)
    """Coroutines the async runner keeps running at once on its event loop."""


class RunqySettings(BaseModel):
    """Every setting of a runqy worker. Unknown keys are errors, never silently ignored.

    Built by :func:`runqy.config.resolve.resolve_settings` from every source. Its
    configuration is that of a pydantic-settings model (defaults validated too), so a
    worker with nothing to read outside its code gets the very values and errors it
    would get through :mod:`runqy.config.sources`.
    """

    # The docstrings below describe each setting (``runqy run --help``), read on demand.
    # The validator is built when something is first validated, not at import: settings made
    # of the defaults alone need none (see construct_checked), and building the first one
    # makes pydantic look for plugins through importlib.metadata, which costs a worker more
    # than the rest of its start.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, defer_build=True)

    runner_cls: str | None = None
    """Which runner runs the tasks: an alias, a class name or ``"package.module:Class"``."""
    python_workers: int | None = Field(default=None, ge=1)
    """A thread pool of N when no runner is named (``RUNQY_PYTHON_WORKERS``, as in runqy-python)."""
    task_timeout_s: float | None = Field(default=None, gt=0)
    """Longest time one attempt of a task may run; None for no limit."""
    require_hard_timeout: bool = False
    """A timed-out task must be killed, not abandoned: only runners with hard timeouts (process) accept it."""
    max_retries: int = Field(default=0, ge=0)
    """Local retries of a retryable failure (RetryableError, timeout, crash) before answering."""
    retry_backoff_s: float = Field(default=0.1, ge=0)
    """First backoff between local retries; doubles each time, with jitter."""
    retry_exceptions: list[str] = []
    """Exceptions retried like RetryableError: builtins (``"ConnectionError"``) or ``"package.module.Class"``."""
    shutdown_timeout_s: float = Field(default=8.0, ge=0)
    """On SIGTERM/SIGINT, how long running tasks may take to finish (the worker kills us after 10 s)."""
    max_tasks_per_child: int | None = Field(default=None, ge=1)
    """Recycle a child process after this many tasks (process and hybrid runners)."""
    max_memory_per_child_mb: int | None = Field(default=None, ge=1)
    """Recycle a child whose memory (with its descendants) exceeds this (process and hybrid runners)."""
    batch_size: int | None = Field(default=None, ge=1)
    """Calls of the handler take lists of up to this many payloads; ``@task(batch_size=...)`` wins."""
    batch_max_wait_ms: float | None = Field(default=None, ge=0)
    """How long a batch short of batch_size may wait for more tasks (default 0); ``@task(max_wait_ms=...)`` wins."""
    max_abandoned_threads: int = Field(default=16, ge=0)
    """Timed-out threads left running before a warning (thread) or a recycle (hybrid)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of runqy's own log lines on stderr."""
    log_format: Literal["text", "json"] = "text"
    """runqy's stderr: ``text`` lines, or ``json``, one object per line for log pipelines."""
    log_every_task: bool = False
    """A log line for every task, not only for those that failed, were retried, timed out or ran slow."""
    slow_task_s: float | None = Field(default=None, gt=0)
    """A task that ran at least this long gets a log line; None for no such lines."""
    stats_interval_s: float | None = Field(default=None, gt=0)
    """Log a stats line this often; None (the default) for none."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve Prometheus metrics on ``/metrics`` at this port (0: any free one; needs ``runqy[metrics]``)."""
    metrics_address: str = "0.0.0.0"
    """The address the metrics endpoint listens on."""
    # Constructed, not validated: validating it would build RunnerOptions' validator at import.
    runner: RunnerOptions = RunnerOptions.model_construct()
    """Options of the runner itself: the ``[tool.runqy.runner]`` table."""

    @model_validator(mode="after")
    def _check_combination(self) -> Self:
        # Runs while the settings are built, so a bad combination fails before any runner starts.
        return self._check_and_derive()

    def _check_and_derive(self) -> Self:
        for dotted, value in check_settings(self).items():
            field, _, option = dotted.partition(".")
            if option:
                value = getattr(self, field).model_copy(update={option: value})
            # The model is frozen for its users; filling in a derived value belongs to its construction.
            object.__setattr__(self, field, value)
        return self

    @field_validator("retry_exceptions")
    @classmethod
    def _exceptions_exist(cls, names: list[str]) -> list[str]:
        for name in names:
            resolve_exception(name)
        return names

    @property
    def runner_name(self) -> str:
        """The runner to use: ``runner_cls`` if set, else a thread pool when ``python_workers`` > 1."""
        if self.runner_cls is not None:
            return self.runner_cls
        return "thread" if (self.python_workers or 1) > 1 else "sequential"

    def runner_class(self) -> type[Runner]:
        """Import the runner class; a :class:`ConfigError` when it is not available in this installation."""
        return resolve_runner_class(self.runner_name)

    def build_runner(self) -> Runner:
        return self.runner_class().from_settings(self)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            self.task_timeout_s,
            self.max_retries,
            self.retry_backoff_s,
            self.max_abandoned_threads,
            tuple(resolve_exception(name) for name in self.retry_exceptions),
        )


def construct_checked(values: dict[str, Any]) -> RunqySettings:
    """Settings from ``values`` that validation would keep as they are (none: the defaults), not validated.

    pydantic's validation is skipped, runqy's own is not: the combination is checked and
    the derived values filled in as when validating. ``values`` that validation would
    change or reject make wrong settings: :func:`runqy.config.resolve.resolve_settings`
    passes only values that need no validation (see :mod:`runqy.config.presence`).
    """
    return RunqySettings.model_construct(**values)._check_and_derive()


def config_file_path() -> Path | None:
    """The file named by ``RUNQY_CONFIG``, made absolute; an error when it names nothing."""
    name = os.environ.get(CONFIG_ENV_VAR)
    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"{CONFIG_ENV_VAR}={name}: no such file; point it at a TOML file like those in configs/")
    return path.resolve()


def resolve_runner_class(name: str) -> type[Runner]:
    """Turn ``runner_cls`` (alias, class name or ``module:Class``) into a Runner subclass."""
    return import_runner(name)
