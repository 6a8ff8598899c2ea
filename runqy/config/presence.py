"""Whether any source outside the code has something to say, found without pydantic-settings.

Most workers set nothing outside their code: no ``RUNQY_*`` setting in the
environment, no ``RUNQY_CONFIG`` file, no ``[tool.runqy]`` table. Their settings are
then the defaults and the values given in code, and pydantic alone builds them;
importing pydantic-settings to find that out would cost more than the rest of the
start. Anything that might be a source answers "yes": the full resolution is never
wrong, only slower.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from runqy.config.settings import CONFIG_ENV_VAR, ENV_NESTED_DELIMITER, ENV_PREFIX

__all__ = ["outside_sources"]

#: ``RUNQY_*`` variables that runqy reads but that are no setting.
_NOT_SETTINGS = frozenset({"RUNQY_CHILD_PROCESS"})


def outside_sources(fields: set[str], environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> list[str]:
    """What, besides the code, may set ``fields``: variable names and file paths; empty when nothing does.

    A variable counts when pydantic-settings would read it (``RUNQY_<FIELD>`` in any
    case, or a nested ``RUNQY_X__Y``); other ``RUNQY_*`` names, such as the Go worker's
    own ``RUNQY_QUEUES``, are not settings. ``pyproject.toml`` counts when it has a
    ``tool.runqy`` key, or when it cannot be read as TOML (the full resolution says why).
    """
    environ = os.environ if environ is None else environ
    found: list[str] = []
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in _NOT_SETTINGS:
            continue
        if upper == CONFIG_ENV_VAR:
            if value:
                found.append(name)
            continue
        if ENV_NESTED_DELIMITER in upper or upper.removeprefix(ENV_PREFIX).lower() in fields:
            found.append(name)
    pyproject = (Path.cwd() if cwd is None else cwd) / "pyproject.toml"
    if _has_runqy_table(pyproject):
        found.append(str(pyproject))
    return found


def _has_runqy_table(pyproject: Path) -> bool:
    try:
        text = pyproject.read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # a folder, or unreadable: the full resolution reports it
    try:
        tool = _tool_table(text)
    except ValueError:  # not TOML, or not UTF-8
        return True
    return not isinstance(tool, dict) or "runqy" in tool


if sys.version_info >= (3, 11):

    def _tool_table(text: bytes) -> object:
        import tomllib  # here: most workers have no pyproject.toml in their folder

        return tomllib.loads(text.decode()).get("tool", {})

else:

    def _tool_table(text: bytes) -> object:
        raise ValueError("no tomllib before Python 3.11")  # pydantic-settings reads the file with tomli
