"""Where each setting came from, found by asking every pydantic-settings source what it provides.

The sources are the very objects settings resolution uses (see
:func:`runqy.config.sources.file_sources`); each is called and returns the values it
holds, so nothing here parses a file or the environment a second time.

An origin is a short string: ``code``, ``cli``, ``env:RUNQY_NAME``, ``config:PATH``
(the file named by ``RUNQY_CONFIG``), ``pyproject:PATH`` (its ``[tool.runqy]``
table) or ``default``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from typing import Any

from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource, InitSettingsSource

from runqy.config.checks import DERIVED_FROM
from runqy.config.settings import RunnerOptions, RunqySettings, env_var
from runqy.config.sources import SettingsFromSources, file_sources
from runqy.errors import ConfigError

__all__ = ["DEFAULT", "Layer", "describe_errors", "describe_origin", "origins", "source_layers"]

DEFAULT = "default"

#: One source's values, flattened to dotted names ("runner.max_threads"), each with its origin.
Layer = dict[str, str]


def source_layers(overrides: Mapping[str, Any], *, code_origin: str = "code") -> list[Layer]:
    """Every source's dotted keys with their origin, highest precedence first."""
    code = InitSettingsSource(SettingsFromSources, init_kwargs=dict(overrides))()
    layers = [dict.fromkeys(_flatten(code), code_origin), _env_layer()]
    for origin, source in file_sources(SettingsFromSources):
        layers.append(dict.fromkeys(_flatten(source()), origin))
    return layers


def _env_layer() -> Layer:
    names = {name.upper(): name for name in os.environ}
    layer: Layer = {}
    for dotted in _flatten(EnvSettingsSource(SettingsFromSources)()):
        parts = dotted.split(".")
        # RUNQY_RUNNER__MAX_THREADS, or the whole table as JSON in RUNQY_RUNNER.
        for candidate in (env_var(dotted), env_var(parts[0])):
            if candidate in names:
                layer[dotted] = f"env:{names[candidate]}"
                break
        else:
            layer[dotted] = "env"
    return layer


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        # An empty table sets nothing; a table's keys are listed one by one.
        keys += _flatten(value, f"{dotted}.") if isinstance(value, Mapping) else [dotted]
    return keys


def origin_of(dotted: str, layers: list[Layer]) -> str | None:
    """The origin of the highest source that sets ``dotted``, the table holding it, or keys inside it."""
    parent = dotted.partition(".")[0]
    for layer in layers:
        if dotted in layer:
            return layer[dotted]
        if parent in layer:  # the whole table given as one value
            return layer[parent]
        inside = next((key for key in layer if key.startswith(f"{dotted}.")), None)
        if inside is not None:  # an unknown table, such as [tool.runqy] inside a RUNQY_CONFIG file
            return layer[inside]
    return None


def origins(settings: RunqySettings, layers: list[Layer]) -> dict[str, str]:
    """The origin of every setting, by dotted name; derived values name the origin of their source field."""
    result: dict[str, str] = {}
    defaults = _dotted_values(RunqySettings())
    for dotted, value in _dotted_values(settings).items():
        origin = origin_of(dotted, layers)
        if origin is None and dotted in DERIVED_FROM and value != defaults[dotted]:
            origin = origin_of(DERIVED_FROM[dotted], layers)
        result[dotted] = origin or DEFAULT
    return result


def _dotted_values(settings: RunqySettings) -> dict[str, Any]:
    values = asdict(settings)
    runner = values.pop("runner")
    return {**values, **{f"runner.{name}": value for name, value in runner.items()}}


def describe_origin(origin: str) -> str:
    """An origin in words, for messages."""
    kind, _, where = origin.partition(":")
    if kind == "env" and where:
        return f"environment variable {where}"
    if kind == "config":
        return f"{where} (the RUNQY_CONFIG file)"
    if kind == "pyproject":
        return f"[tool.runqy] of {where}"
    if origin == "cli":
        return "the command line"
    return "the defaults" if origin == DEFAULT else origin


def describe_errors(
    exc: ValidationError | ConfigError, overrides: Mapping[str, Any], *, code_origin: str = "code"
) -> tuple[str, tuple[str, ...]]:
    """Invalid settings in words, each bad field with the source it came from; and the dotted fields.

    ``exc`` is pydantic's error about single values, or runqy's about their combination.
    """
    layers = source_layers(overrides, code_origin=code_origin)
    lines = ["invalid runqy settings:"]
    if isinstance(exc, ConfigError):
        where = [f"{f} from {describe_origin(origin_of(f, layers) or DEFAULT)}" for f in exc.fields]
        lines.append(f"  {exc}" + (f" ({'; '.join(where)})" if where else ""))
        return "\n".join(lines), exc.fields
    fields: list[str] = []
    for error in exc.errors():
        dotted = ".".join(str(part) for part in error["loc"])
        if not dotted:  # about the whole model
            lines.append(f"  {error['msg']}")
            continue
        fields.append(dotted)
        origin = origin_of(dotted, layers) or DEFAULT
        if error["type"] == "extra_forbidden":
            lines.append(f"  {_unknown_key(dotted, origin)}")
        else:
            lines.append(f"  {dotted} = {error['input']!r} in {describe_origin(origin)}: {error['msg']}")
    return "\n".join(lines), tuple(fields)


def _unknown_key(dotted: str, origin: str) -> str:
    parent, _, key = dotted.rpartition(".")
    valid = [spec.name for spec in dataclass_fields(RunnerOptions if parent == "runner" else RunqySettings)]
    close = difflib.get_close_matches(key, valid, n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"valid keys here: {', '.join(valid)}"
    if origin.startswith("config:") and key == "tool":
        fix = "a RUNQY_CONFIG file holds the settings at its top level, not under [tool.runqy]"
    return f"{dotted}: unknown setting, set in {describe_origin(origin)}; {fix} (every setting: docs/configuration.md)"
