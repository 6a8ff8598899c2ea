"""RunqySettings: every knob of a worker, resolved from code, environment and TOML files.

Precedence, highest first: values given in code, ``RUNQY_*`` environment variables
(nested fields with ``__``), the TOML file named by ``RUNQY_CONFIG``, ``[tool.runqy]``
in the ``pyproject.toml`` of the current directory (the worker's repository when the
Go worker starts it), then the defaults below.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from runqy.attempts import RetryPolicy, resolve_exception
from runqy.errors import ConfigError

if TYPE_CHECKING:
    from runqy.runners.base import Runner

__all__ = [
    "CONFIG_ENV_VAR",
    "RUNNER_ALIASES",
    "RunnerOptions",
    "RunqySettings",
    "load_settings",
    "resolve_runner_class",
]

#: The environment variable naming a TOML settings file.
CONFIG_ENV_VAR = "RUNQY_CONFIG"

#: Short names accepted by ``runner_cls``, and the class each stands for.
RUNNER_ALIASES: dict[str, str] = {
    "sequential": "runqy.runners.sequential:SequentialRunner",
    "thread": "runqy.runners.thread:ThreadRunner",
    "process": "runqy.runners.process:PersistentProcessRunner",
    "hybrid": "runqy.runners.hybrid:HybridRunner",
}
_CLASS_NAMES = {path.rpartition(":")[2]: path for path in RUNNER_ALIASES.values()}


class RunnerOptions(BaseModel):
    """Options of the runner itself: the ``[tool.runqy.runner]`` table, ``RUNQY_RUNNER__*`` in the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Threads of the thread runner (default ``min(32, cpu_count + 4)``).
    max_threads: int | None = Field(default=None, ge=1)
    #: Child processes of the process and hybrid runners (default: physical cores).
    num_processes: int | None = Field(default=None, ge=1)
    #: Threads in each child of the hybrid runner.
    threads_per_process: int | None = Field(default=None, ge=1)
    #: How child processes are started; never set globally for the process.
    start_method: Literal["spawn", "forkserver"] = "spawn"


class RunqySettings(BaseSettings):
    """Every setting of a runqy worker. Unknown keys are errors, never silently ignored."""

    model_config = SettingsConfigDict(
        env_prefix="RUNQY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        pyproject_toml_table_header=("tool", "runqy"),
    )

    #: Which runner runs the tasks: an alias, a class name or ``"package.module:Class"``.
    runner_cls: str | None = None
    #: A thread pool of N when no runner is named (``RUNQY_PYTHON_WORKERS``, as in runqy-python).
    python_workers: int | None = Field(default=None, ge=1)
    #: Longest time one attempt of a task may run; None for no limit.
    task_timeout_s: float | None = Field(default=None, gt=0)
    #: Local retries of a retryable failure (RetryableError, timeout, crash) before answering.
    max_retries: int = Field(default=0, ge=0)
    #: First backoff between local retries; doubles each time, with jitter.
    retry_backoff_s: float = Field(default=0.1, ge=0)
    #: Exceptions retried like RetryableError: builtins (``"ConnectionError"``) or ``"package.module.Class"``.
    retry_exceptions: list[str] = []
    #: On SIGTERM/SIGINT, how long running tasks may take to finish (the worker kills us after 10 s).
    shutdown_timeout_s: float = Field(default=8.0, ge=0)
    #: Recycle a child process after this many tasks (process and hybrid runners).
    max_tasks_per_child: int | None = Field(default=None, ge=1)
    #: Recycle a child whose memory (with its descendants) exceeds this (process and hybrid runners).
    max_memory_per_child_mb: int | None = Field(default=None, ge=1)
    #: Timed-out threads left running before a warning (thread) or a recycle (hybrid).
    max_abandoned_threads: int = Field(default=16, ge=0)
    #: Level of runqy's own log lines on stderr.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    runner: RunnerOptions = RunnerOptions()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = config_file_path()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        sources.append(PyprojectTomlConfigSettingsSource(settings_cls, Path.cwd() / "pyproject.toml"))
        return tuple(sources)

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


def config_file_path() -> Path | None:
    """The file named by ``RUNQY_CONFIG``; an error when it names nothing."""
    name = os.environ.get(CONFIG_ENV_VAR)
    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"{CONFIG_ENV_VAR}={name}: no such file; point it at a TOML file like those in configs/")
    return path


def load_settings(**overrides: Any) -> RunqySettings:
    """Resolve settings from every source; raises :class:`ConfigError` naming each bad field."""
    try:
        settings = RunqySettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    settings.runner_class()  # an unknown runner fails here, before anything starts
    return settings


def _describe(exc: ValidationError) -> str:
    lines = [f"invalid runqy settings ({_sources_hint()}):"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        got = f" (got {error['input']!r})" if error["type"] != "missing" else ""
        lines.append(f"  {field}: {error['msg']}{got}")
    return "\n".join(lines)


def _sources_hint() -> str:
    hint = ["code", "RUNQY_* environment variables"]
    if os.environ.get(CONFIG_ENV_VAR):
        hint.append(f"{CONFIG_ENV_VAR}={os.environ[CONFIG_ENV_VAR]}")
    pyproject = Path.cwd() / "pyproject.toml"
    if pyproject.is_file():
        hint.append(f"[tool.runqy] in {pyproject}")
    return "read from " + ", ".join(hint)


def resolve_runner_class(name: str) -> type[Runner]:
    """Turn ``runner_cls`` (alias, class name or ``module:Class``) into a Runner subclass."""
    from runqy.runners.base import Runner

    path = RUNNER_ALIASES.get(name.lower()) or _CLASS_NAMES.get(name) or name
    module_name, _, class_name = path.partition(":")
    valid = ", ".join([*RUNNER_ALIASES, *_CLASS_NAMES]) + ', or "package.module:Class"'
    if not class_name:
        raise ConfigError(f"runner_cls: unknown runner {name!r}; expected one of {valid}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if path in RUNNER_ALIASES.values():
            raise ConfigError(f"runner_cls: the {name!r} runner is not available yet in this version of runqy") from exc
        raise ConfigError(f"runner_cls: cannot import module {module_name!r} for {name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise ConfigError(f"runner_cls: {name!r} is not a runqy Runner subclass; expected one of {valid}")
    return cls
