"""What users install: the sdist and the wheel build, and the wheel alone serves the example worker.

A module or data file missing from the wheel (a new package without its
``__init__``, ``py.typed``) passes every other test, which import the checkout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The wheel is built from the sdist, so a file the sdist lacks is missing from the wheel too.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def test_the_wheel_holds_every_module_and_the_typing_marker(dist: Path) -> None:
    (wheel,) = dist.glob("runqy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    sources = {f"runqy/{path.relative_to(ROOT / 'runqy').as_posix()}" for path in (ROOT / "runqy").rglob("*.py")}
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    assert "runqy/py.typed" in names
    (sdist,) = dist.glob("runqy-*.tar.gz")
    with tarfile.open(sdist) as archive:
        assert any(name.endswith("/runqy/py.typed") for name in archive.getnames())


def test_the_installed_wheel_serves_the_example_through_runqy_local(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("runqy-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=120
    )
    # The dependencies (pydantic, psutil) come from this interpreter's site-packages, appended after
    # the new environment's own, where runqy itself now lives; a plain path line runs no .pth of that directory.
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    located = subprocess.check_output([python, "-c", "import runqy; print(runqy.__file__)"], text=True, cwd=tmp_path)
    assert Path(located.strip()).is_relative_to(venv), located

    out = tmp_path / "responses.jsonl"
    run = subprocess.run(
        [
            venv / "bin" / "runqy",
            "local",
            "runqy.examples.echo",
            "--generate",
            "20",
            "--concurrency",
            "4",
            "--output",
            str(out),
            "--quiet-worker",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    responses = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(responses) == 20
    assert all(response["error"] is None for response in responses)
