"""Properties of the codec over generated inputs: requests round-trip; every result becomes one valid line."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runqy.protocol import MAX_LINE_BYTES, TaskRequest, TaskResponse, encode_response, parse_request

# What the Go worker can send: valid UTF-8 text (no lone surrogates), finite numbers.
text = st.text(st.characters(exclude_categories=("Cs",)))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=30,
)
requests = st.builds(
    TaskRequest,
    task_id=text,
    payload=json_values,
    type=text,
    queue=text,
    retry_count=st.integers(min_value=0, max_value=2**31),
    max_retry=st.integers(min_value=0, max_value=2**31),
)


# What a handler can return: JSON values, and the things that are not JSON.
class Opaque:
    """An object json cannot encode."""


not_json = (
    st.just(math.nan)
    | st.just(math.inf)
    | st.just(-math.inf)
    | st.sets(st.integers(), max_size=3)
    | st.binary(max_size=8)
    | st.builds(Opaque)
    | st.complex_numbers()
)
results = st.recursive(
    json_values | not_json,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(text | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)
# Any string, lone surrogates included: handlers can raise with anything in the message.
any_text = st.text()


def strict_loads(line: bytes) -> Any:
    def reject(token: str) -> Any:
        raise AssertionError(f"{token} is not JSON: the Go worker would drop the line")

    return json.loads(line, parse_constant=reject)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_any_request_as_the_go_worker_writes_it_round_trips(request: TaskRequest) -> None:
    line = json.dumps(
        {
            "task_id": request.task_id,
            "type": request.type,
            "payload": request.payload,
            "retry_count": request.retry_count,
            "max_retry": request.max_retry,
            "queue": request.queue,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    assert parse_request(line) == request


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(task_id=any_text, result=results, error=st.none() | any_text, retry=st.booleans())
def test_any_handler_outcome_becomes_exactly_one_valid_response_line(
    task_id: str, result: Any, error: str | None, retry: bool
) -> None:
    line = encode_response(TaskResponse(task_id, result, error, retry))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) < MAX_LINE_BYTES
    message = strict_loads(line)
    assert list(message) == ["task_id", "result", "error", "retry"]
    assert message["task_id"] == task_id
    assert message["error"] is None or isinstance(message["error"], str)
    assert isinstance(message["retry"], bool)
    if message["error"] is None:
        # Success carries the result itself: it survived the trip as JSON.
        assert message["result"] == json.loads(json.dumps(result))
    if error is None and message["error"] is not None:
        assert "result is not JSON" in message["error"]


@pytest.mark.parametrize("size_mib", [9, 11, 40])
def test_a_result_near_or_over_the_line_limit_still_makes_one_valid_line(size_mib: int) -> None:
    line = encode_response(TaskResponse("big", "x" * (size_mib * 2**20)))
    assert line.count(b"\n") == 1 and len(line) < MAX_LINE_BYTES
    message = strict_loads(line)
    assert (message["error"] is None) == (size_mib < 10)
