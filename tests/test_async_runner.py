"""The async runner beyond the shared contract: what only a loop of coroutines promises.

Handlers that refuse to start, offloaded plain handlers, loop-bound ``@load`` clients,
cancellation on close, and real workers with hundreds to a thousand tasks in flight:
against an HTTP server on loopback, across a timeout, and across SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerFactory
from harness import Replies, wait_for_files, wait_until

from runqy import current_task
from runqy.app import Registry
from runqy.config.resolve import resolve_settings
from runqy.errors import ConfigWarning, HandlerUnsupported
from runqy.local.driver import LocalWorker, WorkerStartFailed, make_request
from runqy.protocol import TaskRequest
from runqy.runners.eventloop import AsyncRunner

IN_FLIGHT = 1000
#: The runner's slots for that many: conftest's async runner has fewer.
EVERY_TASK_IN_FLIGHT = {"RUNQY_RUNNER__MAX_CONCURRENCY": str(IN_FLIGHT)}


@pytest.fixture
def runner_name() -> str:
    """The workers this module spawns (conftest's ``spawn``) run on the async runner."""
    return "async"


def test_a_plain_def_handler_is_refused_at_start_naming_the_thread_runner(
    write_worker: Callable[[str], Path], start_worker: WorkerFactory
) -> None:
    script = write_worker(
        """
        from runqy import run, task

        @task
        def handle(payload):
            return payload

        run()
        """
    )
    worker = start_worker(script, ready=False, RUNQY_RUNNER_CLS="async")
    with pytest.raises(WorkerStartFailed, match=r'plain def.*runner_cls = "thread".*@task\(offload=True\)'):
        worker.wait_ready(timeout_s=30)
    assert worker.wait(timeout_s=30) == 1


def test_the_refusal_comes_before_load_runs() -> None:
    loaded: list[bool] = []
    registry = Registry()
    registry.load(lambda: loaded.append(True))
    registry.task(lambda payload: payload)
    with pytest.raises(HandlerUnsupported, match="async def"):
        AsyncRunner().start(registry)
    assert loaded == []


def test_an_offloaded_plain_handler_runs_in_the_pool_and_sees_its_task(
    start_runner: Callable[..., AsyncRunner],
) -> None:
    registry = Registry()

    @registry.task(offload=True)
    def handle(payload: Any) -> Any:
        return {"task_id": current_task().task_id, "thread": threading.current_thread().name}

    runner = start_runner(registry)
    response = runner.run_task(TaskRequest("plain-1", None))
    assert response.error is None
    assert response.result["task_id"] == "plain-1" and response.result["thread"].startswith("runqy-offload")


@pytest.mark.parametrize("batch_size", [None, 4], ids=["single", "batch"])
def test_a_timed_out_offloaded_call_counts_as_abandoned_until_its_thread_ends(
    start_runner: Callable[..., AsyncRunner], batch_size: int | None
) -> None:
    release = threading.Event()
    registry = Registry()

    def stuck(payload: Any) -> Any:
        release.wait(30.0)  # a thread cannot be cancelled: it runs on past its timeout
        return payload

    if batch_size is None:
        registry.task(offload=True)(stuck)
    else:
        registry.task(offload=True, batch_size=batch_size)(lambda payloads: [stuck(p) for p in payloads])
    runner = start_runner(registry, task_timeout_s=0.2)
    try:
        response = runner.run_task(TaskRequest("stuck", None))
        assert response.retry is True and "timed out" in (response.error or "")
        assert runner.abandoned_attempts == 1, "the thread still runs the timed-out call"
    finally:
        release.set()
    wait_until(lambda: runner.abandoned_attempts == 0, "the released thread ends and is no longer counted")


def test_async_load_runs_on_the_loop_every_task_uses_and_current_task_reaches_called_code(
    start_runner: Callable[..., AsyncRunner],
) -> None:
    registry = Registry()

    async def whose_task() -> str:  # code the handler calls, not the handler itself
        await asyncio.sleep(0)
        return current_task().task_id

    @registry.load
    async def setup() -> dict[str, Any]:
        # A lock is bound to the loop that first waits on it: a loop-bound client in small.
        return {"lock": asyncio.Lock(), "loop": asyncio.get_running_loop()}

    @registry.task
    async def handle(payload: Any, ctx: dict[str, Any]) -> Any:
        async with ctx["lock"]:
            await asyncio.sleep(0.01)
        return {"same_loop": ctx["loop"] is asyncio.get_running_loop(), "task_id": await whose_task()}

    runner = start_runner(registry)
    replies = Replies()
    ids = [f"t{n}" for n in range(50)]
    for task_id in ids:
        replies.submit(runner, task_id, None)
    assert [replies.one(t).result for t in ids] == [{"same_loop": True, "task_id": t} for t in ids]


def test_close_answers_the_tasks_it_had_to_cancel_as_retryable(start_runner: Callable[..., AsyncRunner]) -> None:
    registry = Registry()
    cancelled: list[str] = []

    @registry.task
    async def handle(payload: Any) -> Any:
        try:
            await asyncio.sleep(payload)
        except asyncio.CancelledError:
            cancelled.append(current_task().task_id)
            raise
        return "done"

    runner = start_runner(registry, runner={"max_concurrency": 10})
    replies = Replies()
    ids = [f"long-{n}" for n in range(30)]  # 10 running, 20 in the backlog
    replies.submit(runner, "quick", 0.0)
    replies.wait_for("quick")
    for task_id in ids:
        replies.submit(runner, task_id, 60.0)
    runner.close(0.2)
    responses = [replies.one(t) for t in ids]
    assert all(r.retry and "shut down before the task finished" in (r.error or "") for r in responses)
    assert len(cancelled) == 10, "the running coroutines were really cancelled"
    assert replies.one("quick").result == "done"


def test_python_workers_is_warned_about_and_points_at_max_concurrency() -> None:
    with pytest.warns(ConfigWarning, match=r"python_workers = 8 is ignored by the async runner.*max_concurrency"):
        settings = resolve_settings({"runner_cls": "async", "python_workers": 8})
    assert AsyncRunner.from_settings(settings).capacity == 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        assert (
            AsyncRunner.from_settings(
                resolve_settings({"runner_cls": "async", "runner": {"max_concurrency": 7}})
            ).capacity
            == 7
        )


class _Reply(BaseHTTPRequestHandler):
    """Answers each GET once ``parties`` requests are open at the same time: proof that they were in flight."""

    def do_GET(self) -> None:
        server: _LoopbackServer = self.server  # type: ignore[assignment]
        server.barrier.wait()
        body = json.dumps({"path": self.path, "server": server.token}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # 500 connections arrive at once

    def __init__(self, parties: int) -> None:
        super().__init__(("127.0.0.1", 0), _Reply)
        self.barrier = threading.Barrier(parties, timeout=30)
        self.token = "loopback-server"


HTTP_WORKER = """
import asyncio, json
from runqy import run, task

@task
async def handle(payload):
    reader, writer = await asyncio.open_connection("127.0.0.1", payload["port"])
    writer.write(f"GET /item/{payload['n']} HTTP/1.0\\r\\nHost: loopback\\r\\n\\r\\n".encode())
    await writer.drain()
    status = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\\r\\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    writer.close()
    await writer.wait_closed()
    return {"status": status.split()[1].decode(), "reply": json.loads(body)}

run()
"""


@pytest.mark.timeout(120)
def test_five_hundred_http_calls_in_flight_are_each_answered_with_the_servers_reply(
    write_worker: Callable[[str], Path], start_worker: WorkerFactory
) -> None:
    server = _LoopbackServer(parties=500)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        worker = start_worker(write_worker(HTTP_WORKER), RUNQY_RUNNER_CLS="async")
        port = server.server_address[1]
        requests = [make_request({"port": port, "n": n}, task_id=f"call-{n}") for n in range(500)]
        outcomes = list(worker.run(requests, concurrency=500, deadline_s=60))
        assert worker.shutdown() == 0
    finally:
        server.shutdown()
        server.server_close()
    assert len(outcomes) == 500
    for outcome in outcomes:
        n = outcome.request["payload"]["n"]
        assert outcome.response is not None and outcome.response["error"] is None, outcome.response
        assert outcome.response["result"] == {"status": "200", "reply": {"path": f"/item/{n}", "server": server.token}}


@pytest.mark.timeout(120)
def test_a_timed_out_attempt_is_retried_at_once_while_a_thousand_others_keep_running(
    spawn: Callable[..., LocalWorker],
) -> None:
    worker = spawn(**EVERY_TASK_IN_FLIGHT, RUNQY_TASK_TIMEOUT_S="0.3", RUNQY_MAX_RETRIES="1", RUNQY_RETRY_BACKOFF_S="0")
    requests = [make_request({"op": "work", "seconds": 0.2}) for _ in range(5 * IN_FLIGHT)]
    stuck = make_request({"op": "stuck_first"}, task_id="stuck")
    requests.insert(2 * IN_FLIGHT, stuck)
    outcomes = list(worker.run(requests, concurrency=IN_FLIGHT, deadline_s=60))
    assert worker.shutdown() == 0
    by_id = {o.request["task_id"]: o for o in outcomes}
    assert by_id["stuck"].response is not None
    assert (by_id["stuck"].response["result"], by_id["stuck"].response["error"]) == ({"attempt": 2}, None)
    assert all(o.status == "ok" for o in outcomes), [o.response for o in outcomes if o.status != "ok"][:3]
    # The others went on meanwhile: a full window of them was answered while the stuck task was in flight.
    answered_meanwhile = [o for o in outcomes if by_id["stuck"].sent_at < o.answered_at < by_id["stuck"].answered_at]
    assert len(answered_meanwhile) >= IN_FLIGHT - 1


@pytest.mark.timeout(120)
def test_sigterm_with_a_thousand_in_flight_answers_every_accepted_task_and_exits_zero(
    spawn: Callable[..., LocalWorker], tmp_path: Path
) -> None:
    # Half the tasks outlast shutdown_timeout_s: they are given up on and answered retry: true.
    worker = spawn(**EVERY_TASK_IN_FLIGHT, RUNQY_SHUTDOWN_TIMEOUT_S="1")
    requests = [
        make_request({"op": "work", "seconds": 0.2 if n % 2 else 30.0, "dir": str(tmp_path)}) for n in range(IN_FLIGHT)
    ]
    pendings = [worker.submit(request) for request in requests]
    wait_for_files(tmp_path, IN_FLIGHT)  # every task is running: the signal lands mid-load
    worker.terminate()
    assert worker.wait(timeout_s=30) == 0
    statuses = [p.outcome().status for p in pendings]
    assert statuses == ["ok" if n % 2 else "retryable" for n in range(IN_FLIGHT)]
    assert worker.unmatched_responses == [] and worker.garbage_lines == []
