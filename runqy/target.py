"""Import the user's worker module, named as a file path (``worker.py``) or a module (``pkg.worker``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from runqy.errors import ConfigError

__all__ = ["import_target"]


def import_target(target: str) -> ModuleType:
    """Import the module that registers the ``@task`` handler; raises :class:`ConfigError` when it cannot.

    A file is imported under its own name with its folder first on ``sys.path``, as
    ``python worker.py`` would see its siblings, and so that child processes can import
    it by name again.
    """
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"worker file {target!r} does not exist")
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module_name = path.stem
    else:
        module_name = target
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import worker module {target!r}: {exc}; give a file path or an importable module"
            ) from exc
        raise
