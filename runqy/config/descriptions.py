"""What each setting means, in words: the docstring under its field in :mod:`runqy.config.settings`.

Read only to describe settings (``runqy run --help``): the models do not collect their
docstrings when they are built, since parsing the source at every start would cost a
worker more than building the models does.
"""

from __future__ import annotations

from functools import cache

# pydantic's own reader of attribute docstrings, the one ``use_attribute_docstrings`` runs.
from pydantic._internal._docs_extraction import extract_docstrings_from_cls

from runqy.config.settings import RunnerOptions, RunqySettings

__all__ = ["setting_descriptions"]


@cache
def setting_descriptions() -> dict[str, str]:
    """Every setting's description by dotted name (``"runner.max_threads"``); a field without one is absent."""
    descriptions = extract_docstrings_from_cls(RunqySettings, use_inspect=True)
    runner = extract_docstrings_from_cls(RunnerOptions, use_inspect=True)
    return {**descriptions, **{f"runner.{name}": text for name, text in runner.items()}}
