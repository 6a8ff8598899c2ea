"""``runqy config``: show the settings a worker started here would use, and where each value came from."""

from __future__ import annotations

import argparse
import json
from typing import Any

from runqy.cli.options import add_settings_options, settings_overrides

__all__ = ["add_config_command", "format_report"]


def add_config_command(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="print the resolved settings and the source of each value",
        description="Resolve the settings from the same sources `runqy run` reads, in the current directory: "
        "command-line options, RUNQY_* environment variables, the RUNQY_CONFIG file, [tool.runqy] in "
        "./pyproject.toml, defaults.",
    )
    config.add_argument(
        "--json",
        action="store_true",
        help='print {"settings": ..., "sources": {"field": "origin"}, "runner": ..., "warnings": [...]}',
    )
    add_settings_options(config)
    config.set_defaults(command=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    # Imported here: every other subcommand, `runqy run` first, starts without pydantic-settings.
    from runqy.config.resolve import describe_settings

    report = describe_settings(settings_overrides(args), code_origin="cli")
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def format_report(report: dict[str, Any]) -> str:
    """The report of :func:`~runqy.config.resolve.describe_settings` as an aligned table."""
    from runqy.config.provenance import DEFAULT, describe_origin

    runner = report["runner"]
    caps = runner["capabilities"]
    lines = [
        f"runner: {runner['name']} ({runner['class']})"
        + ("" if runner["available"] else f"  NOT AVAILABLE: {runner['unavailable_reason']}"),
        f"  hard timeouts: {_yes(caps['hard_timeout'])}, one shared @load context: "
        f"{_yes(caps['shares_load_context'])}, CPU-parallel: {_yes(caps['cpu_parallel'])}",
        "",
    ]
    values = _flatten(report["settings"])
    width = max(len(name) for name in values)
    value_width = max(len(json.dumps(value)) for value in values.values())
    for name, value in values.items():
        origin = report["sources"][name]
        where = origin if origin == DEFAULT else describe_origin(origin)
        lines.append(f"{name:<{width}}  {json.dumps(value):<{value_width}}  {where}")
    if report["warnings"]:
        lines += ["", "warnings:", *(f"  {warning}" for warning in report["warnings"])]
    return "\n".join(lines)


def _flatten(settings: dict[str, Any]) -> dict[str, Any]:
    runner = settings["runner"]
    return {**{k: v for k, v in settings.items() if k != "runner"}, **{f"runner.{k}": v for k, v in runner.items()}}


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
