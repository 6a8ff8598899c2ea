"""Properties of the codec over generated inputs: requests round-trip; every result becomes one valid line."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runqy.errors import ProtocolError
from runqy.protocol import (
    MAX_LINE_BYTES,
    TaskRequest,
    TaskResponse,
    encode_response,
    parse_request,
    parse_request_stdlib,
)

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


# Both parsers take the same lines to the same requests: pydantic-core's for a serving
# worker, the standard library's for a one-shot one (and for the message of a line the first rejects).
parsers = pytest.mark.parametrize("parse", [parse_request, parse_request_stdlib], ids=["validator", "stdlib"])


@parsers
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_any_request_as_the_go_worker_writes_it_round_trips(
    parse: Callable[[bytes], TaskRequest], request: TaskRequest
) -> None:
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
    assert parse(line) == request


# Each field of a request as anything a line may hold: the right type, any JSON value, or absent.
MISSING: Any = object()
request_fields = st.fixed_dictionaries(
    {
        "task_id": text | json_values | st.just(MISSING),
        "payload": json_values | st.just(MISSING),
        "type": text | json_values | st.just(MISSING),
        "queue": text | json_values | st.just(MISSING),
        "retry_count": st.integers() | json_values | st.just(MISSING),
        "max_retry": st.integers() | json_values | st.just(MISSING),
        "unknown": json_values | st.just(MISSING),
    }
)
EXPECTED_TYPES = {"task_id": str, "type": str, "queue": str, "retry_count": int, "max_retry": int}


@parsers
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(request_fields)
def test_a_request_is_accepted_exactly_when_its_fields_have_their_types(
    parse: Callable[[bytes], TaskRequest], fields: dict[str, Any]
) -> None:
    present = {name: value for name, value in fields.items() if value is not MISSING}
    line = json.dumps(present).encode()
    well_typed = "task_id" in present and all(
        type(present[name]) is kind for name, kind in EXPECTED_TYPES.items() if name in present
    )
    if well_typed:
        assert parse(line) == TaskRequest(
            **{name: value for name, value in present.items() if name in TaskRequest._fields}
        )
    else:
        with pytest.raises(ProtocolError) as raised:
            parse(line)
        # The first field that is wrong; task_id is wrong when absent, the others take defaults.
        wrong = next(
            name
            for name, kind in EXPECTED_TYPES.items()
            if (name in present and type(present[name]) is not kind) or (name == "task_id" and name not in present)
        )
        assert (wrong == "task_id" and "task_id" in str(raised.value)) or f"{wrong} must be" in str(raised.value)


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
