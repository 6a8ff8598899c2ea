"""What a worker imports before it serves: nothing that only another configuration or process needs.

Each check starts a real worker (``python worker.py`` with pipes, as the Go worker does) whose
handler reports which of the heavy modules its process has loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = """\
import sys
from runqy import task, {call}

HEAVY = {heavy!r}

@task
def handle(payload):
    return [name for name in HEAVY if name in sys.modules]

if __name__ == "__main__":
    {call}({kwargs})
"""

#: Needed only with a configuration source, for the metrics or stats, by other runners or by runqy bench.
NOT_FOR_A_PLAIN_WORKER = [
    "pydantic_settings",
    "tomllib",
    "importlib.metadata",  # pydantic's plugin lookup, when a first validator is built
    "pydantic.plugin._loader",
    "psutil",
    "asyncio",
    "multiprocessing",
    "prometheus_client",
    "runqy.config.provenance",
    "runqy.config.descriptions",
]
#: What only ``runqy local`` and ``runqy bench`` use, though ``runqy run`` builds their parsers too.
NOT_FOR_RUNQY_RUN = ["runqy.local.driver", "runqy.local.progress", "subprocess"]
#: A process runner's child runs handlers: the settings and the serving loop are the parent's.
NOT_FOR_A_CHILD = ["pydantic", "pydantic_core", "runqy.config.settings", "runqy.serve", "runqy.observe.report"]


def loaded(folder: Path, kwargs: str, heavy: list[str], command: tuple[str, ...] = (), call: str = "run") -> list[str]:
    """The heavy modules loaded by a worker started with ``python worker.py`` (or ``python COMMAND worker.py``)."""
    (folder / "worker.py").write_text(WORKER.format(heavy=heavy, kwargs=kwargs, call=call))
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNQY_")}
    done = subprocess.run(
        [sys.executable, *command, "worker.py"],
        input=b'{"task_id": "t1", "payload": null}\n',
        capture_output=True,
        cwd=folder,
        env=environ,
        timeout=60,
        check=True,
    )
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["task_id"] == "t1" and answer["error"] is None, answer
    result: list[str] = answer["result"]
    return result


def test_a_worker_with_no_configuration_loads_none_of_the_heavy_modules(tmp_path: Path) -> None:
    assert loaded(tmp_path, "", NOT_FOR_A_PLAIN_WORKER) == []
    assert loaded(tmp_path, "workers=2", NOT_FOR_A_PLAIN_WORKER) == []


def test_a_process_runner_child_loads_neither_settings_nor_serving_machinery(tmp_path: Path) -> None:
    assert loaded(tmp_path, 'runner_cls="process", runner={"num_processes": 1}', NOT_FOR_A_CHILD) == []


def test_runqy_run_loads_neither_the_local_driver_nor_what_it_needs(tmp_path: Path) -> None:
    heavy = NOT_FOR_A_PLAIN_WORKER + NOT_FOR_RUNQY_RUN
    assert loaded(tmp_path, "", heavy, command=("-m", "runqy", "run")) == []


def test_a_one_shot_worker_parses_its_request_without_importing_pydantic_core(tmp_path: Path) -> None:
    # Its one request would wait for the import, about a fifth of its whole run.
    assert loaded(tmp_path, "", ["pydantic_core"], call="run_once") == []
