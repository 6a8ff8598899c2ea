"""What each setting means, in words: the docstring under its field in :mod:`runqy.config.settings`.

Read only to describe settings (``runqy run --help``): parsing the source at every
start would cost a worker more than building its settings does.
"""

from __future__ import annotations

from functools import cache

# pydantic's own reader of attribute docstrings (``use_attribute_docstrings``), which reads any class.
from pydantic._internal._docs_extraction import extract_docstrings_from_cls

from runqy.config.settings import RunnerOptions, RunqySettings

__all__ = ["setting_descriptions"]


@cache
def setting_descriptions() -> dict[str, str]:
    """Every setting's description by dotted name (``"runner.max_threads"``); a field without one is absent."""
    descriptions = extract_docstrings_from_cls(RunqySettings, use_inspect=True)
    runner = extract_docstrings_from_cls(RunnerOptions, use_inspect=True)
    return {**descriptions, **{f"runner.{name}": text for name, text in runner.items()}}
