"""The ``runqy`` command: serve a worker, drive one locally as the Go worker does, compare runners, inspect settings."""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic.fields import FieldInfo

from runqy.errors import ConfigError, RunqyError
from runqy.settings import RunnerOptions, RunqySettings, env_var

__all__ = ["main"]

#: Short spellings of the two options every runqy-python user knows.
_ALIASES = {"runner_cls": ["--runner"], "python_workers": ["--workers"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args))
    except (RunqyError, ValueError) as exc:
        # ConfigError is a ValueError; anything else reaching here is a user-facing mistake too.
        print(f"runqy: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runqy", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="serve a worker over stdin/stdout, as the Go worker starts it")
    run.add_argument("target", help="the worker: a file (worker.py) or a module (pkg.worker)")
    run.add_argument("--once", action="store_true", help="serve exactly one task (one-shot mode)")
    _add_settings_options(run)
    run.set_defaults(command=_cmd_run)

    from runqy.bench_cli import add_bench_command
    from runqy.config_cli import add_config_command
    from runqy.local_cli import add_local_command

    add_local_command(commands)
    add_bench_command(commands)
    add_config_command(commands)
    return parser


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    """One option per settings field, so the command line can set anything a TOML file can."""
    group = parser.add_argument_group("settings (win over RUNQY_* variables and TOML files)")
    for prefix, fields in (("", RunqySettings.model_fields), ("runner.", RunnerOptions.model_fields)):
        for name, info in fields.items():
            if name == "runner":
                continue
            flags = [f"--{name.replace('_', '-')}", *_ALIASES.get(name, [])]
            kind, choices = _option_type(info)
            group.add_argument(
                *flags,
                dest=f"setting:{prefix}{name}",
                type=kind,
                choices=choices,
                default=None,
                metavar=name.upper(),
                help=_help(info, env_var(prefix + name)),
            )


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, shaped as keyword arguments of RunqySettings."""
    overrides: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("setting:") or value is None:
            continue
        path = dest.removeprefix("setting:").split(".")
        target = overrides
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return overrides


def settings_arguments(args: argparse.Namespace) -> list[str]:
    """The same settings as command-line arguments, to pass them on to ``runqy run``."""
    argv: list[str] = []
    for dest, value in vars(args).items():
        if dest.startswith("setting:") and value is not None:
            argv += [f"--{dest.removeprefix('setting:').rpartition('.')[2].replace('_', '-')}", str(value)]
    return argv


def _option_type(info: FieldInfo) -> tuple[Any, list[str] | None]:
    annotation = info.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    base = args[0] if args else str
    if typing.get_origin(base) is Literal:
        return str, [str(choice) for choice in typing.get_args(base)]
    return (base if base in (int, float) else str), None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _help(info: FieldInfo, env_var: str) -> str:
    """The field's own description (its docstring in runqy.settings), as plain text, and its variable."""
    return f"{(info.description or '').replace('``', '')} [{env_var}]".lstrip()


def _cmd_run(args: argparse.Namespace) -> int:
    from runqy import worker
    from runqy.settings import load_settings
    from runqy.target import import_target

    settings = load_settings(**settings_overrides(args))
    import_target(args.target)
    if worker.served_in_this_process():
        return 0  # the module called run() itself while being imported, and that run is over
    with worker.Worker(settings) as serve:
        if args.once:
            serve.run_once()
        else:
            serve.run()
    return 0


def read_jsonl(path: Path) -> Iterator[Any]:
    """Parse a JSON-lines file, skipping blank lines; errors name the line."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise ConfigError(f"{path}:{number}: not a JSON line: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
