"""Malformed and hostile request lines, sent raw to a real worker under every runner.

DESIGN.md: every request line gets exactly one response or, for a blank line,
nothing; the worker keeps serving. After each line's answers arrived, a well-formed
task proves the worker still serves and that no second answer came meanwhile.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from runner_params import CLEAN_ENV, faulty_worker, runner_params

from runqy.local.driver import LocalWorker


def request(task_id: str, payload: object = None, **fields: object) -> bytes:
    return json.dumps({"task_id": task_id, "payload": payload, **fields}).encode()


#: (name, raw line without its newline, how many responses, the task id they must carry or None for any).
CORPUS: list[tuple[str, bytes, int, str | None]] = [
    ("empty line", b"", 0, None),
    ("spaces only", b"   ", 0, None),
    ("tab only", b"\t", 0, None),
    ("lone carriage return", b"\r", 0, None),
    ("not json", b"hello world", 1, ""),
    ("truncated object", b'{"task_id":"trunc-1","payload":', 1, "trunc-1"),
    ("unclosed string", b'{"task_id":"unclosed', 1, ""),
    ("trailing garbage", b'{"task_id":"trail-1"} xyz', 1, "trail-1"),
    ("two objects on one line", b'{"task_id":"two-a"}{"task_id":"two-b"}', 1, "two-a"),
    ("top-level array", b'[{"task_id":"arr-1"}]', 1, "arr-1"),
    ("top-level string", b'"task"', 1, ""),
    ("top-level number", b"42", 1, ""),
    ("top-level null", b"null", 1, ""),
    ("top-level true", b"true", 1, ""),
    ("missing task_id", request("ignored")[:1] + b'"payload":1}', 1, ""),
    ("task_id null", b'{"task_id":null,"payload":1}', 1, ""),
    ("task_id number", b'{"task_id":12345,"payload":1}', 1, ""),
    ("task_id list", b'{"task_id":["a"],"payload":1}', 1, ""),
    ("task_id object", b'{"task_id":{"id":"x"},"payload":1}', 1, ""),
    ("retry_count string", request("rc-str", 1, retry_count="2"), 1, "rc-str"),
    ("retry_count float", request("rc-float", 1, retry_count=1.5), 1, "rc-float"),
    ("retry_count boolean", request("rc-bool", 1, retry_count=True), 1, "rc-bool"),
    ("max_retry null", request("mr-null", 1, max_retry=None), 1, "mr-null"),
    ("type number", request("type-num", 1, type=7), 1, "type-num"),
    ("queue object", request("queue-obj", 1, queue={"q": 1}), 1, "queue-obj"),
    ("NaN payload", b'{"task_id":"nan-1","payload":NaN}', 1, "nan-1"),
    ("infinite number", b'{"task_id":"inf-1","payload":1e400}', 1, "inf-1"),
    ("400-digit integer", b'{"task_id":"bigint-1","payload":' + b"9" * 400 + b"}", 1, "bigint-1"),
    ("invalid UTF-8 in a string", b'{"task_id":"utf-1","payload":"\xff\xfe\xc3"}', 1, "utf-1"),
    ("invalid UTF-8 outside strings", b'\xff{"task_id":"utf-2"}', 1, "utf-2"),
    ("byte order mark", b'\xef\xbb\xbf{"task_id":"bom-1"}', 1, "bom-1"),
    ("raw NUL byte in a string", b'{"task_id":"nul-1","payload":"a\x00b"}', 1, "nul-1"),
    ("NUL byte alone", b"\x00", 1, ""),
    ("escaped NUL in payload", request("nul-2", "a\x00b"), 1, "nul-2"),
    ("lone surrogate escape", b'{"task_id":"sur-1","payload":"\\ud800"}', 1, "sur-1"),
    ("CRLF line ending", request("crlf-1", {"x": 1}) + b"\r", 1, "crlf-1"),
    ("unicode task id", request("t\u00e2che-\U0001f600"), 1, "t\u00e2che-\U0001f600"),
    ("quotes and newline escapes in task id", request('q"\\\n-1'), 1, 'q"\\\n-1'),
    ("duplicate task_id keys", b'{"task_id":"dup-a","task_id":"dup-b","payload":1}', 1, None),
    ("deeply nested arrays", b'{"task_id":"deep-1","payload":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 1, "deep-1"),
    ("deeply nested objects", b'{"task_id":"deep-2","payload":' + b'{"a":' * 20_000 + b"1" + b"}" * 20_001, 1, None),
    ("20 MiB payload echoed back", request("huge-1", "x" * (20 * 1024 * 1024)), 1, "huge-1"),
    ("1 MiB task id", request("i" * (1024 * 1024)), 1, "i" * (1024 * 1024)),
    ("100k-key object", request("wide-1", {f"k{i}": i for i in range(100_000)}), 1, "wide-1"),
]


#: Lines that are no valid request, or whose result cannot be sent: each must be answered with an error.
MUST_FAIL = {
    "not json", "truncated object", "unclosed string", "trailing garbage", "two objects on one line",
    "top-level array", "top-level string", "top-level number", "top-level null", "top-level true",
    "missing task_id", "task_id null", "task_id number", "task_id list", "task_id object",
    "retry_count string", "retry_count float", "retry_count boolean", "type number", "queue object",
    "NaN payload", "infinite number", "invalid UTF-8 outside strings", "byte order mark", "NUL byte alone",
    "raw NUL byte in a string", "20 MiB payload echoed back",
}  # fmt: skip
#: Odd but valid requests: the handler runs and its echo comes back.
MUST_SUCCEED = {
    "400-digit integer", "escaped NUL in payload", "CRLF line ending", "unicode task id",
    "quotes and newline escapes in task id", "1 MiB task id", "100k-key object",
}  # fmt: skip


@pytest.fixture(scope="module", params=runner_params())
def worker(request: pytest.FixtureRequest) -> Iterator[LocalWorker]:
    env = {**CLEAN_ENV, "RUNQY_RUNNER_CLS": request.param}
    with LocalWorker([sys.executable, str(faulty_worker(request.param))], env=env) as started:
        started.wait_ready(timeout_s=30)
        yield started


def test_the_corpus_is_large_enough_and_its_expectations_name_real_lines() -> None:
    assert len(CORPUS) >= 30
    assert {name for name, *_ in CORPUS} >= (MUST_FAIL | MUST_SUCCEED)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "line", "answers", "task_id"), [pytest.param(*c, id=c[0]) for c in CORPUS])
def test_each_hostile_line_gets_exactly_one_answer_and_the_worker_keeps_serving(
    worker: LocalWorker, name: str, line: bytes, answers: int, task_id: str | None
) -> None:
    before = len(worker.unmatched_responses)
    worker.send_line(line + b"\n")
    # A concurrent runner may answer a later task first: wait for this line's answers, then check none follow.
    assert worker.wait_until(lambda: len(worker.unmatched_responses) >= before + answers, timeout_s=30)
    assert worker.call({"kind": "echo", "after": "hostile"}, timeout_s=30)["result"] == {
        "kind": "echo",
        "after": "hostile",
    }
    new = worker.unmatched_responses[before:]
    assert len(new) == answers, new
    if answers and task_id is not None:
        assert new[0]["task_id"] == task_id
    for response in new:
        assert set(response) == {"task_id", "result", "error", "retry"}
        if name in MUST_FAIL:
            assert isinstance(response["error"], str) and response["error"], response
            assert response["retry"] is False
        if name in MUST_SUCCEED:
            assert response["error"] is None, response["error"]
    assert worker.garbage_lines == [], worker.violations
    assert worker.process.poll() is None
