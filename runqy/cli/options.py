"""Options and helpers that several ``runqy`` subcommands share: one option per setting, task sources, JSON lines."""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from runqy.config.settings import RunnerOptions, RunqySettings, env_var
from runqy.errors import ConfigError

__all__ = [
    "DEFAULT_PAYLOAD",
    "add_settings_options",
    "add_task_source_options",
    "read_jsonl",
    "settings_arguments",
    "settings_overrides",
]

#: Short spellings of the two options every runqy-python user knows.
_ALIASES = {"runner_cls": ["--runner"], "python_workers": ["--workers"]}

#: The payload of generated tasks when none is given: the built-in example counts its words.
DEFAULT_PAYLOAD = '{"text": "the quick brown fox jumps over the lazy dog"}'


_SETTING = "setting:"


class _SettingsHelpFormatter(argparse.HelpFormatter):
    """Puts each setting's description before its variable, read only when help is shown.

    Reading the descriptions parses the settings' source, which every ``runqy run``
    would otherwise pay for before its worker starts.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = super()._get_help_string(action)
        if not action.dest.startswith(_SETTING):
            return help_text
        from runqy.config.descriptions import setting_descriptions

        description = setting_descriptions().get(action.dest.removeprefix(_SETTING), "")
        # As plain text; argparse formats help with %, so a literal % is doubled.
        return f"{description.replace('``', '').replace('%', '%%')} {help_text}".lstrip()


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """One option per settings field, so the command line can set anything a TOML file can."""
    parser.formatter_class = _SettingsHelpFormatter
    group = parser.add_argument_group("settings (win over RUNQY_* variables and TOML files)")
    for prefix, settings_cls in (("", RunqySettings), ("runner.", RunnerOptions)):
        for spec in fields(settings_cls):
            name = spec.name
            if name == "runner":
                continue
            flags = [f"--{name.replace('_', '-')}", *_ALIASES.get(name, [])]
            repeated = typing.get_origin(spec.type) is list
            kind, choices = _option_type(typing.get_args(spec.type)[0] if repeated else spec.type)
            group.add_argument(
                *flags,
                dest=f"{_SETTING}{prefix}{name}",
                type=kind,
                choices=choices,
                default=None,
                # A list setting takes one value per option: --retry-exceptions A --retry-exceptions B.
                action="append" if repeated else "store",
                metavar=name.upper(),
                help=f"[{env_var(prefix + name)}]" + (" (once per item)" if repeated else ""),
            )


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, shaped as keyword arguments of RunqySettings."""
    overrides: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(_SETTING) or value is None:
            continue
        path = dest.removeprefix(_SETTING).split(".")
        target = overrides
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return overrides


def settings_arguments(args: argparse.Namespace) -> list[str]:
    """The same settings as command-line arguments, to pass them on to ``runqy run``."""
    argv: list[str] = []
    for dest, value in vars(args).items():
        if dest.startswith(_SETTING) and value is not None:
            flag = f"--{dest.removeprefix(_SETTING).rpartition('.')[2].replace('_', '-')}"
            for item in value if isinstance(value, list) else [value]:
                argv += [flag, str(item)]
    return argv


def _option_type(annotation: Any) -> tuple[Any, list[str] | None]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    base = args[0] if args else str
    if typing.get_origin(base) is Literal:
        return str, [str(choice) for choice in typing.get_args(base)]
    return (base if base in (int, float) else str), None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def add_task_source_options(parser: argparse.ArgumentParser, default_count: int) -> None:
    """``--input`` / ``--generate`` / ``--payload``: where the tasks come from (shared with ``runqy bench``)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, help="JSON lines: payloads, or full request objects with a task_id")
    source.add_argument("--generate", type=int, metavar="N", help=f"send N generated tasks (default {default_count})")
    parser.add_argument(
        "--payload", default=DEFAULT_PAYLOAD, help="JSON payload of generated tasks; {n} in it becomes the task number"
    )
    parser.set_defaults(default_count=default_count)


def read_jsonl(path: Path) -> Iterator[Any]:
    """Parse a JSON-lines file, skipping blank lines; errors name the line."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise ConfigError(f"{path}:{number}: not a JSON line: {exc}") from None
