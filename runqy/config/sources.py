"""Reading settings from the environment and TOML files: the pydantic-settings side of :class:`RunqySettings`.

:data:`SettingsFromSources` is the model of :class:`RunqySettings` with
pydantic-settings' sources, highest first: values in code, ``RUNQY_*`` variables,
the ``RUNQY_CONFIG`` file, ``[tool.runqy]`` of ``./pyproject.toml``. Settings
resolution, ``runqy config`` and :mod:`runqy.config.provenance` all read the sources
through this module, so what is reported is what is used. It is imported only when one of those sources has something
to say (see :mod:`runqy.config.presence`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from runqy.config.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, RunqySettings, config_file_path
from runqy.config.validation import from_model, model_of
from runqy.errors import ConfigError

__all__ = ["SettingsFromSources", "file_sources", "values_from_sources"]

PYPROJECT_TABLE = ("tool", "runqy")


class _ReadFromSources(BaseSettings):
    """The base of :data:`SettingsFromSources`: which sources are read, in which order."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        validate_default=True,
        pyproject_toml_table_header=PYPROJECT_TABLE,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, *(source for _, source in file_sources(settings_cls)))


#: :class:`RunqySettings` as a pydantic-settings model: each field read from code, the environment and the TOML files.
SettingsFromSources = model_of(RunqySettings, _ReadFromSources)


def values_from_sources(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every field's value, read from every source and validated; raises pydantic's ValidationError.

    Keyword arguments of :class:`RunqySettings`, which checks the whole configuration
    when built from them: which sources were read is no part of the settings.
    """
    return from_model(RunqySettings, SettingsFromSources(**overrides))


def file_sources(settings_cls: type[BaseSettings]) -> list[tuple[str, PydanticBaseSettingsSource]]:
    """The TOML sources, highest first, each with its origin (``config:PATH``, ``pyproject:PATH``)."""
    sources: list[tuple[str, PydanticBaseSettingsSource]] = []
    config_file = config_file_path()
    if config_file is not None:
        sources.append((f"config:{config_file}", _read_toml(config_file, TomlConfigSettingsSource, settings_cls)))
    pyproject = Path.cwd() / "pyproject.toml"
    sources.append((f"pyproject:{pyproject}", _read_toml(pyproject, PyprojectTomlConfigSettingsSource, settings_cls)))
    return sources


def _read_toml(
    path: Path, source: type[TomlConfigSettingsSource], settings_cls: type[BaseSettings]
) -> PydanticBaseSettingsSource:
    try:
        return source(settings_cls, path)
    except ValueError as exc:  # tomllib.TOMLDecodeError (tomli's on Python 3.10) is a ValueError
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix the syntax of that file") from exc
