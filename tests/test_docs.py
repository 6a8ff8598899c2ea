"""docs/configuration.md stays true: its examples print what they say, and its table of settings matches the code."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from config_env import flat, isolate

from runqy.app import default_registry
from runqy.config.catalog import BUILTIN_RUNNERS, RUNNER_SPECIFIC_FIELDS
from runqy.config.provenance import origins, source_layers
from runqy.config.resolve import resolve_settings
from runqy.config.settings import RunqySettings
from runqy.errors import ConfigWarning

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
TEXT = DOC.read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", TEXT, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def promised_output(code: str) -> list[str]:
    """What an example says it prints: the comment after each ``print(...)``; a trailing ``...`` marks a prefix."""
    return [line.split("  # ", 1)[1] for line in code.splitlines() if "print(" in line and "  # " in line]


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_example_prints_what_its_comments_say_and_its_asserts_hold(
    index: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = blocks("python")[index]
    promised = promised_output(code)
    assert promised or "assert " in code, "an example shows what it does: a print() with a comment, or an assert"
    saved = default_registry.handler, default_registry.loader
    try:
        # Executed as an imported module would be, so `if __name__ == "__main__"` does not serve stdin.
        exec(compile(code, f"{DOC}:python[{index}]", "exec"), {"__name__": "docs_example"})
    finally:
        default_registry.handler, default_registry.loader = saved
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(promised), printed
    for line, comment in zip(printed, promised, strict=True):
        assert line.startswith(comment.removesuffix(" ...")) if comment.endswith(" ...") else line == comment, line


@pytest.mark.parametrize("index", range(len(blocks("toml"))))
def test_toml_example_is_valid_and_clean(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = blocks("toml")[index]
    if "[tool.runqy]" in body:
        (tmp_path / "pyproject.toml").write_text(body)
        origin = f"pyproject:{tmp_path / 'pyproject.toml'}"
    else:
        (tmp_path / "example.toml").write_text(body)
        monkeypatch.setenv("RUNQY_CONFIG", str(tmp_path / "example.toml"))
        origin = f"config:{tmp_path / 'example.toml'}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        settings = resolve_settings()
    assert settings.runner_cls is not None
    assert origins(settings, source_layers({}))["runner_cls"] == origin


def table_rows() -> dict[str, list[str]]:
    section = TEXT.split("## Every setting", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    cells = [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]
    return {row[0]: row[1:] for row in cells}


def test_table_lists_every_setting_with_its_env_var_and_default() -> None:
    rows = table_rows()
    defaults = flat(RunqySettings())
    assert sorted(rows) == sorted(defaults)
    for field, (env_var, default, _honoured, _meaning) in rows.items():
        assert env_var == "RUNQY_" + field.upper().replace(".", "__")
        assert json.loads(default) == defaults[field], field


def test_table_says_which_runners_honour_each_setting() -> None:
    for field, (_env, _default, honoured, _meaning) in table_rows().items():
        if field in RUNNER_SPECIFIC_FIELDS:
            readers = [alias for alias, spec in BUILTIN_RUNNERS.items() if field in spec.options]
            assert honoured == ", ".join(readers), field
        elif field != "python_workers":
            assert honoured == "all", field
