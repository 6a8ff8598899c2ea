"""The codec: what requests are accepted, and that every response is one strict JSON line the Go worker accepts."""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable

import pytest

from runqy.errors import ProtocolError
from runqy.protocol import (
    MAX_ERROR_CHARS,
    MAX_LINE_BYTES,
    READY_LINE,
    ProtocolChannel,
    TaskRequest,
    TaskResponse,
    encode_response,
    error_status_line,
    parse_request,
    parse_request_stdlib,
)

GO_WORKER_LINE = (
    b'{"task_id":"0b9e","type":"inference","payload":{"prompt":"hi"},"retry_count":2,"max_retry":5,'
    b'"queue":"inference.high"}'
)


def strict_json(line: bytes) -> object:
    """Parse as the Go worker does: NaN and Infinity are not JSON."""
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return json.loads(line, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))


def test_a_go_worker_request_is_parsed_into_its_fields() -> None:
    assert parse_request(GO_WORKER_LINE) == TaskRequest("0b9e", {"prompt": "hi"}, "inference", "inference.high", 2, 5)


def test_optional_fields_default_and_unknown_keys_are_ignored() -> None:
    assert parse_request(b'{"task_id": "x", "extra": [1]}') == TaskRequest("x")


def test_a_null_payload_is_passed_as_none() -> None:
    assert parse_request(b'{"task_id": "x", "payload": null}').payload is None


@pytest.mark.parametrize(
    "line",
    [
        b"{",
        b"null",
        b"1",
        b'{"task_id": null}',
        b'{"task_id": true}',
        b'{"task_id": "x", "max_retry": 1.5}',
        b"\xff\xfe",
        pytest.param(b'{"task_id": "x", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="nested-100000"),
    ],
)
@pytest.mark.parametrize("parse", [parse_request, parse_request_stdlib], ids=["validator", "stdlib"])
def test_malformed_requests_raise_protocol_error(parse: Callable[[bytes], TaskRequest], line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(line)


def test_booleans_are_not_accepted_as_integers() -> None:
    with pytest.raises(ProtocolError, match="retry_count must be an integer"):
        parse_request(b'{"task_id": "x", "retry_count": true}')


def test_success_response_is_compact_strict_json_with_four_keys() -> None:
    line = encode_response(TaskResponse("t", {"ok": [1, 2.5, None, "é"]}))
    assert strict_json(line) == {"task_id": "t", "result": {"ok": [1, 2.5, None, "é"]}, "error": None, "retry": False}
    assert line.isascii()


@pytest.mark.parametrize("result", [math.nan, math.inf, {1, 2}, object(), b"bytes", {"nested": [math.nan]}])
def test_non_json_results_become_error_responses(result: object) -> None:
    decoded = strict_json(encode_response(TaskResponse("t", result)))
    assert isinstance(decoded, dict)
    assert decoded["result"] is None and decoded["retry"] is False
    assert decoded["error"].startswith("result is not JSON")


def test_circular_results_become_error_responses() -> None:
    loop: list[object] = []
    loop.append(loop)
    decoded = strict_json(encode_response(TaskResponse("t", loop)))
    assert isinstance(decoded, dict) and "circular" in decoded["error"]


def test_oversized_results_become_error_responses_under_the_limit() -> None:
    line = encode_response(TaskResponse("t", "x" * MAX_LINE_BYTES))
    assert len(line) < 1024
    decoded = strict_json(line)
    assert isinstance(decoded, dict) and "10 MiB" in decoded["error"]


def test_long_errors_are_clipped_keeping_head_and_tail() -> None:
    error = "HEAD" + "." * (MAX_ERROR_CHARS * 3) + "TAIL"
    decoded = strict_json(encode_response(TaskResponse.failure("t", error)))
    assert isinstance(decoded, dict)
    assert decoded["error"].startswith("HEAD") and decoded["error"].endswith("TAIL")
    assert len(decoded["error"]) < MAX_ERROR_CHARS + 100


def test_an_empty_failure_message_still_reads_as_failure() -> None:
    assert TaskResponse.failure("t", "").error


def test_lone_surrogates_are_escaped_not_fatal() -> None:
    decoded = strict_json(encode_response(TaskResponse("t", "\ud800")))
    assert isinstance(decoded, dict) and decoded["error"] is None


def test_status_lines() -> None:
    assert strict_json(READY_LINE) == {"status": "ready"}
    assert strict_json(error_status_line("model missing")) == {"status": "error", "error": "model missing"}


def test_lines_from_many_threads_alone_or_queued_come_out_whole() -> None:
    read_fd, write_fd = os.pipe()
    channel = ProtocolChannel(write_fd)
    # Lines far over the pipe's atomic write size, so that writes are split into parts.
    lines = [(f"{n:04d}" + "x" * 100_000 + "\n").encode() for n in range(40)]

    def send(part: list[bytes], alone: bool) -> None:
        for line in part:
            (channel.send_alone if alone else channel.send)(line)

    senders = [threading.Thread(target=send, args=(lines[i::4], i % 2 == 0)) for i in range(4)]
    received = b""
    for sender in senders:
        sender.start()
    while received.count(b"\n") < len(lines):
        received += os.read(read_fd, 1 << 20)
    for sender in senders:
        sender.join()
    channel.close(5)
    os.close(read_fd)
    os.close(write_fd)
    assert sorted(received.splitlines(keepends=True)) == lines


def test_answers_sent_together_go_out_at_the_end_of_the_block_and_others_at_once() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    channel = ProtocolChannel(write_fd)
    try:
        with channel.together():
            channel.send_alone(b'{"task_id":"a"}\n')
            channel.send_alone(b'{"task_id":"b"}\n')
            with pytest.raises(BlockingIOError):
                os.read(read_fd, 1024)  # held until the block ends
            other = threading.Thread(target=channel.send_alone, args=(b'{"task_id":"other"}\n',))
            other.start()
            other.join()
            assert os.read(read_fd, 1024) == b'{"task_id":"other"}\n'  # another thread's line is not held
        assert os.read(read_fd, 1024) == b'{"task_id":"a"}\n{"task_id":"b"}\n'
        channel.send_alone(b'{"task_id":"c"}\n')  # after the block: at once again
        assert os.read(read_fd, 1024) == b'{"task_id":"c"}\n'
    finally:
        channel.close(5)
        os.close(read_fd)
        os.close(write_fd)


def test_flush_waits_for_the_answers_held_by_a_block_under_way() -> None:
    """A task answered inside together() is no longer open: shutting down must not lose its line."""
    read_fd, write_fd = os.pipe()
    channel = ProtocolChannel(write_fd)
    inside, finish = threading.Event(), threading.Event()

    def answer_together() -> None:
        with channel.together():
            channel.send_alone(b'{"task_id":"held"}\n')
            inside.set()
            finish.wait()

    answering = threading.Thread(target=answer_together)
    answering.start()
    try:
        assert inside.wait(5)
        assert channel.flush(timeout_s=0.05) is False  # the block, and its line, are not done
        finish.set()
        assert channel.flush(timeout_s=5) is True
        assert os.read(read_fd, 1024) == b'{"task_id":"held"}\n'
    finally:
        finish.set()
        answering.join()
        channel.close(5)
        os.close(read_fd)
        os.close(write_fd)
