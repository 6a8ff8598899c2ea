"""The package layout stays layered: no import cycles, and no layer imports one above it.

The graph is read from the source with :mod:`ast`: every ``import`` that runs, at
module level or inside a function, is an edge; imports under ``if TYPE_CHECKING:``
are annotations only and are not.
"""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import runqy

PACKAGE_DIR = Path(runqy.__file__).parent

#: Layers from the bottom up; a module may import its own layer and those below.
#: The serving core is every top-level module that is not the public facade, and the
#: Runner contract (``runqy.runners.base``): the core serves through it, runners implement it.
#: ``runqy.observe`` (counts, log format, metrics) is core too: the core and every runner report to it.
LAYERS = ["core", "runners", "config", "facade", "examples", "local", "cli"]
FACADE = {"runqy", "runqy.worker", "runqy.builder"}
CONTRACT = {"runqy.runners", "runqy.runners.base"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in FACADE:
        return "facade"
    if module in CONTRACT or module == "runqy.observe" or module.startswith("runqy.observe."):
        return "core"
    if module == "runqy.__main__":
        return "cli"
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE_DIR / parts[1]).is_dir()):
        return parts[1]
    return "core"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The runqy modules ``module`` imports when it runs (each ``from X import name`` may name a submodule)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    known = set(paths)
    return {module: runtime_imports(path, module, known) for module, path in paths.items()}


GRAPH = import_graph()


def test_the_graph_covers_every_layer() -> None:
    """A guard for the guard: a parser that saw no edges would pass every check below."""
    assert {layer_of(module) for module in GRAPH} == set(LAYERS)
    assert "runqy.protocol" in GRAPH["runqy.serve"]
    assert "runqy.config.settings" in GRAPH["runqy.config.resolve"]


def test_no_module_imports_itself_through_others() -> None:
    try:
        TopologicalSorter(GRAPH).prepare()
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_layer_above_its_own(module: str) -> None:
    rank = LAYERS.index(layer_of(module))
    upward = sorted(target for target in GRAPH[module] if LAYERS.index(layer_of(target)) > rank)
    assert not upward, f"{module} ({layer_of(module)}) imports {upward}, from a higher layer"


def test_a_cycle_is_caught() -> None:
    graph = {**GRAPH, "runqy.errors": {*GRAPH["runqy.errors"], "runqy.serve"}}
    with pytest.raises(CycleError):
        TopologicalSorter(graph).prepare()


ROOT = PACKAGE_DIR.parent
ARCHITECTURE_DOC = ROOT / "docs" / "architecture.md"


def _exists(path: str) -> bool:
    if "/" not in path:  # a bare module name in the package tree
        return any(PACKAGE_DIR.rglob(path))
    return (ROOT / path).exists() or (PACKAGE_DIR / path).exists()


def test_every_path_the_architecture_page_names_exists() -> None:
    text = ARCHITECTURE_DOC.read_text()
    paths = set(re.findall(r"[\w/]+\.py", text))
    assert len(paths) > 30  # the page names modules; a broken pattern would check nothing
    assert not sorted(path for path in paths if not _exists(path))


def test_every_name_the_architecture_page_gives_a_module_defines_exists() -> None:
    """``config/resolve.py:load_settings`` and ``runners/base.py:Runner``: the module defines that name."""
    text = ARCHITECTURE_DOC.read_text()
    missing = []
    for path, name in re.findall(r"([\w/]+\.py):(\w+)", text):
        source = (PACKAGE_DIR / path).read_text()
        if not re.search(rf"^(class|def) {name}\b|^{name}\b.*=", source, re.MULTILINE):
            missing.append(f"{path}:{name}")
    assert not missing


def test_the_architecture_page_is_linked_from_the_readme_and_the_docs_index() -> None:
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()
    assert "(architecture.md)" in (ROOT / "docs" / "index.md").read_text()
