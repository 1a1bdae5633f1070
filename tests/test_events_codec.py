"""Events and their wire codec: round trips, error messages, schema, fuzzing (R6)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kiki_events.codec import decode, encode, event_json_schema
from kiki_events.errors import EventDecodeError, KikiEventsError
from kiki_events.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    AgentLifecycleEvent,
    Cost,
    CustomEvent,
    DoneEvent,
    ErrorEvent,
    InterruptEvent,
    InterruptInfo,
    LLMCallEvent,
    ModelCost,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
    trusted,
    trusted_token,
)
from kiki_events.formats.kiki import decode_sse, sse_data

RUN = "run_7f3a9c2e4b1d"
ENVELOPE: dict[str, Any] = {
    "run_id": RUN,
    "ts": 1718000000.125,
    "thread_id": "thread-42",
    "agent": "research/researcher",
    "causation_id": f"{RUN}:3",
    "node": "api-1",
}

EXAMPLES: list[StreamEvent] = [
    StatusEvent(**ENVELOPE, seq=1, status="started", graph="research_team"),
    AgentLifecycleEvent(**ENVELOPE, seq=2, phase="completed", duration_s=1.25),
    AgentLifecycleEvent(**ENVELOPE, seq=3, phase="failed", duration_s=0.5, error="RuntimeError: api_key=***"),
    TokenEvent(**ENVELOPE, seq=4, message_id="msg-1", text="Redis streams keep history"),
    TokenEvent(**ENVELOPE, seq=5, message_id="msg-1", text="think…", kind="reasoning"),
    ToolCallEvent(**ENVELOPE, seq=6, phase="start", tool_call_id="call_1", name="web_search", message_id="msg-1"),
    ToolCallEvent(**ENVELOPE, seq=7, phase="args", tool_call_id="call_1", args_delta='{"query": "re'),
    ToolCallEvent(**ENVELOPE, seq=8, phase="end", tool_call_id="call_1", name="web_search", args={"query": "redis"}),
    ToolResultEvent(**ENVELOPE, seq=9, tool_call_id="call_1", name="web_search", output="3 results", truncated=False),
    ToolResultEvent(
        **ENVELOPE,
        seq=10,
        tool_call_id="call_2",
        name="fetch_page",
        error="TimeoutError: slow",
        error_type="TimeoutError",
        duration_s=2.5,
    ),
    CustomEvent(**ENVELOPE, seq=11, name="multiagent:sync", data={"progress": 0.5, "steps": [1, 2], "ok": True}),
    InterruptEvent(**ENVELOPE, seq=12, interrupts=(InterruptInfo(id="int-1", value={"question": "Approve?"}),)),
    ErrorEvent(**ENVELOPE, seq=13, message="bad input", error_type="ValueError"),
    LLMCallEvent(
        **ENVELOPE,
        seq=14,
        message_id="msg-1",
        status="success",
        model="gpt-4o-mini",
        provider="openai",
        duration_s=1.75,
        ttft_s=0.25,
        usage=Usage(input_tokens=120, output_tokens=80, total_tokens=200, reasoning_tokens=30, cached_tokens=64),
        cost_usd=0.000318,
    ),
    DoneEvent(
        **ENVELOPE,
        seq=15,
        status="success",
        usage=Usage(input_tokens=120, output_tokens=80, total_tokens=200, reasoning_tokens=30, cached_tokens=64),
        duration_s=3.5,
        trace_id="trace-abc",
        cost=Cost(
            total_usd=0.000318,
            unpriced_calls=1,
            models=(
                ModelCost(model="gpt-4o-mini", provider="openai", calls=1, usage=Usage(output_tokens=80), usd=0.000318),
                ModelCost(model="in-house-7b", calls=1),
            ),
        ),
    ),
]


NOT_TOKENS = [e for e in EXAMPLES if e.type != "token"]


def _ids(events: list[StreamEvent]) -> list[str]:
    return [f"{e.type}-{e.seq}" for e in events]


def test_the_examples_cover_every_event_type() -> None:
    assert {e.type for e in EXAMPLES} == set(EVENT_TYPES)
    assert len(EVENT_TYPES) == 10


@pytest.mark.parametrize("event", EXAMPLES, ids=_ids(EXAMPLES))
def test_encode_then_decode_gives_the_same_event(event: StreamEvent) -> None:
    data = encode(event)

    assert isinstance(data, bytes)
    assert decode(data) == event
    assert decode(data.decode()) == event
    assert type(decode(data)) is type(event)


@pytest.mark.parametrize("event", EXAMPLES, ids=_ids(EXAMPLES))
def test_encode_is_compact_json_without_nulls(event: StreamEvent) -> None:
    data = encode(event)
    fields = json.loads(data)

    assert b"null" not in data
    assert None not in fields.values()
    assert data == json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()  # compact
    assert fields["type"] == event.type
    assert fields["v"] == SCHEMA_VERSION


def test_optional_fields_left_out_are_absent_not_null() -> None:
    event = TokenEvent(run_id=RUN, seq=1, ts=1.0, message_id="m", text="hi")

    assert json.loads(encode(event)) == {
        "run_id": RUN,
        "seq": 1,
        "ts": 1.0,
        "v": 1,
        "type": "token",
        "message_id": "m",
        "text": "hi",
        "kind": "text",
    }


@pytest.mark.parametrize("event", NOT_TOKENS, ids=_ids(NOT_TOKENS))
def test_sse_data_then_decode_sse_gives_the_same_event(event: StreamEvent) -> None:
    data = sse_data(event)
    fields = json.loads(data)

    # The frame's id and event lines carry these; the data does not repeat them.
    assert not {"run_id", "seq", "type"} & fields.keys()
    assert decode_sse(event.id, event.type, data) == event


@pytest.mark.parametrize("event", [e for e in EXAMPLES if e.type == "token"])
def test_token_sse_data_leaves_out_run_constant_fields(event: TokenEvent) -> None:
    fields = json.loads(sse_data(event))

    assert not {"run_id", "seq", "type", "thread_id", "node", "causation_id", "v"} & fields.keys()
    assert fields["text"] == event.text and fields["message_id"] == event.message_id
    assert fields["agent"] == event.agent
    assert ("kind" in fields) is (event.kind != "text")
    decoded = decode_sse(event.id, "token", sse_data(event))
    assert decoded == event.model_copy(update={"thread_id": None, "node": None, "causation_id": None})


def test_token_sse_data_is_small() -> None:
    event = TokenEvent(**ENVELOPE, seq=123456, message_id="run-abc:m1", text=" the")

    assert len(sse_data(event)) < len(encode(event)) - 60


def test_a_connection_notice_decodes_from_its_whole_event_without_an_id() -> None:
    notice = StatusEvent(run_id=RUN, seq=0, ts=2.0, status="gap", detail="replay window passed", first_seq=40)

    assert decode_sse("", "status", encode(notice)) == notice


def test_event_id_is_run_id_and_seq() -> None:
    assert EXAMPLES[3].id == f"{RUN}:4"
    run_with_colon = TokenEvent(run_id="a:b", seq=7, ts=1.0, message_id="m", text="x")
    assert decode_sse(run_with_colon.id, "token", sse_data(run_with_colon)) == run_with_colon


# -- errors ---------------------------------------------------------------------------


def _valid() -> dict[str, Any]:
    return json.loads(encode(EXAMPLES[3]))


def _decode_error(data: bytes | str, **kwargs: Any) -> str:
    with pytest.raises(EventDecodeError) as info:
        decode(data, **kwargs)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, KikiEventsError)
    return str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'"token"', "must be a JSON object, got str"),
        (b"42", "must be a JSON object, got int"),
        (b"null", "must be a JSON object, got NoneType"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 5_000, "nested too deeply"),
    ],
)
def test_decode_rejects_what_is_not_a_json_object(data: bytes, expected: str) -> None:
    assert expected in _decode_error(data)


def test_decode_names_an_unknown_type() -> None:
    message = _decode_error(json.dumps({**_valid(), "type": "tokens"}))

    assert "unknown event type 'tokens'" in message
    assert "token" in message.split("expected one of", 1)[1]


def test_decode_names_a_missing_type() -> None:
    fields = _valid()
    del fields["type"]

    assert "unknown event type None" in _decode_error(json.dumps(fields))


def test_decode_rejects_another_schema_version() -> None:
    message = _decode_error(json.dumps({**_valid(), "v": 2}))

    assert "schema version" in message and "v=2" in message


@pytest.mark.parametrize("missing", ["run_id", "seq", "ts", "message_id", "text"])
def test_decode_names_a_missing_field(missing: str) -> None:
    fields = _valid()
    del fields[missing]

    message = _decode_error(json.dumps(fields))

    assert message.startswith("invalid token event")
    assert missing in message
    assert "required" in message.lower()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", -1),
        ("seq", "first"),
        ("run_id", ""),
        ("run_id", "r" * 129),
        ("ts", "yesterday"),
        ("kind", "shout"),
        ("text", 5),
        ("colour", "red"),
    ],
)
def test_decode_names_an_invalid_field(field: str, value: object) -> None:
    message = _decode_error(json.dumps({**_valid(), field: value}))

    assert f": {field}:" in message


def test_decode_counts_further_problems() -> None:
    fields = _valid()
    del fields["text"], fields["message_id"]

    assert "(and 1 more problems)" in _decode_error(json.dumps(fields))


def test_decode_rejects_nan_and_infinity_which_would_not_encode_back() -> None:
    raw = encode(EXAMPLES[3]).replace(b'"ts":1718000000.125', b'"ts":NaN')
    assert b"NaN" in raw

    assert "ts" in _decode_error(raw)
    assert "duration_s" in _decode_error(encode(EXAMPLES[1]).replace(b'"duration_s":1.25', b'"duration_s":Infinity'))


def test_decode_refuses_oversized_input_before_parsing_it() -> None:
    data = encode(EXAMPLES[3])

    message = _decode_error(data, max_bytes=len(data) - 1)

    assert f"{len(data)} bytes" in message and f"limit of {len(data) - 1}" in message
    assert decode(data, max_bytes=len(data)) == EXAMPLES[3]
    assert "limit" in _decode_error(b" " * (2 << 20))


@pytest.mark.parametrize(
    ("event_id", "event_type", "data", "expected"),
    [
        (f"{RUN}:4", "token", b"{oops", "not valid JSON"),
        (f"{RUN}:4", "token", b"[]", "must be a JSON object"),
        (f"{RUN}:4", "token", b"[" * 50_000, "nested too deeply"),
        ("no-seq", "token", b"{}", "is not of the form"),
        (f"{RUN}:x", "token", b"{}", "is not of the form"),
        (f"{RUN}:²", "token", b"{}", "is not of the form"),
        (f"{RUN}:٣", "token", b"{}", "is not of the form"),
        (f"{RUN}:" + "9" * 5000, "token", b"{}", "is not of the form"),
        (f"{RUN}:4", "tokenz", b"{}", "unknown event type 'tokenz'"),
        (f"{RUN}:4", "token", b'{"ts": 1.0, "text": "x"}', "message_id"),
    ],
)
def test_decode_sse_errors_name_the_problem(event_id: str, event_type: str, data: bytes, expected: str) -> None:
    with pytest.raises(EventDecodeError, match=expected):
        decode_sse(event_id, event_type, data)


def test_decode_sse_refuses_oversized_data() -> None:
    data = sse_data(EXAMPLES[0])

    with pytest.raises(EventDecodeError, match="limit of 10"):
        decode_sse(EXAMPLES[0].id, "status", data, max_bytes=10)


def test_decode_sse_accepts_non_ascii_text_near_the_limit() -> None:
    # Re-encoding escapes non-ASCII text (6 bytes per character); the limit is on the input.
    event = TokenEvent(run_id=RUN, seq=1, ts=1.0, message_id="m", text="日本語" * 1000)
    data = sse_data(event)

    assert decode_sse(event.id, "token", data, max_bytes=len(data)) == event


# -- trusted tokens and immutability ----------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "reasoning"])
def test_trusted_token_equals_the_validated_token(kind: Any) -> None:
    args: dict[str, Any] = {
        "run_id": RUN,
        "seq": 4,
        "ts": 1718000000.125,
        "thread_id": "thread-42",
        "agent": "writer",
        "causation_id": None,
        "node": "api-1",
        "message_id": "msg-1",
        "text": "hello",
        "kind": kind,
    }
    validated = TokenEvent(**args)

    trusted = trusted_token(**args)

    assert type(trusted) is TokenEvent
    assert trusted == validated
    assert encode(trusted) == encode(validated)
    assert sse_data(trusted) == sse_data(validated)
    assert trusted.model_dump() == validated.model_dump()
    assert trusted.model_fields_set == validated.model_fields_set | {"v", "type", "kind"}
    assert repr(trusted) == repr(validated)
    assert decode(encode(trusted)) == trusted


_ENVELOPE: dict[str, Any] = {
    "run_id": RUN,
    "seq": 7,
    "ts": 1718000000.125,
    "thread_id": "thread-42",
    "causation_id": "other:3",
    "node": "api-1",
}
_USAGE = {"input_tokens": 12, "output_tokens": 30, "total_tokens": 42, "reasoning_tokens": 5, "cached_tokens": 2}


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (AgentLifecycleEvent, {"agent": "research/researcher", "phase": "started"}),
        (AgentLifecycleEvent, {"agent": "writer", "phase": "completed", "duration_s": 0.25}),
        (Usage, _USAGE),
        (Usage, {**_USAGE, "reasoning_tokens": 0}),
        (
            LLMCallEvent,
            {"agent": "writer", "message_id": "m3", "status": "success", "model": "gpt-x", "provider": "openai",
             "duration_s": 1.5, "ttft_s": 0.125, "usage": Usage(**_USAGE), "error_type": None},
        ),
        (
            LLMCallEvent,
            {"agent": "writer", "message_id": "m5", "status": "success", "model": "gpt-x", "provider": "openai",
             "duration_s": 1.5, "ttft_s": None, "usage": Usage(**_USAGE), "error_type": None, "cost_usd": 0.00125},
        ),
        (
            LLMCallEvent,
            {"agent": None, "message_id": "m4", "status": "error", "model": None, "provider": None,
             "duration_s": 0.5, "ttft_s": None, "usage": Usage(), "error_type": "TimeoutError"},
        ),
    ],
)  # fmt: skip
def test_trusted_models_equal_the_validated_ones(kind: Any, fields: dict[str, Any]) -> None:
    given = {**_ENVELOPE, **fields} if kind is not Usage else fields
    validated = kind(**given)

    built = trusted(kind, dict(given))

    assert type(built) is kind
    assert built == validated
    assert list(built.__dict__) == list(validated.__dict__)  # the order JSON is written in
    assert built.model_fields_set == validated.model_fields_set
    assert built.model_dump() == validated.model_dump()
    assert repr(built) == repr(validated)
    if kind is not Usage:
        assert encode(built) == encode(validated)
        assert sse_data(built) == sse_data(validated)
        assert decode(encode(built)) == built
    name = next(iter(fields))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(built, name, getattr(built, name))


@pytest.mark.parametrize("event", [*EXAMPLES, trusted_token(RUN, 1, 1.0, None, None, None, None, "m", "x")])
def test_events_are_immutable(event: StreamEvent) -> None:
    with pytest.raises(ValidationError, match="frozen"):
        event.seq = 99  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        event.run_id = "other"  # type: ignore[misc]
    assert event.seq != 99


def test_events_reject_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="colour"):
        TokenEvent(run_id=RUN, seq=1, ts=1.0, message_id="m", text="x", colour="red")  # type: ignore[call-arg]


# -- JSON schema ----------------------------------------------------------------------


def test_event_json_schema_is_a_discriminated_union_of_the_ten_types() -> None:
    schema = event_json_schema()

    assert schema["title"] == "StreamEvent"
    variants = schema.get("oneOf") or schema.get("anyOf")
    assert variants is not None and len(variants) == 10
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert {v["$ref"] for v in variants} == set(schema["discriminator"]["mapping"].values())
    json.dumps(schema)  # plain JSON all the way down


def _definition(schema: dict[str, Any], event_type: str) -> dict[str, Any]:
    ref = schema["discriminator"]["mapping"][event_type]
    return schema["$defs"][ref.removeprefix("#/$defs/")]


@pytest.mark.parametrize("event", EXAMPLES, ids=_ids(EXAMPLES))
def test_every_encoded_event_fits_its_schema_definition(event: StreamEvent) -> None:
    schema = event_json_schema()
    definition = _definition(schema, event.type)
    fields = json.loads(encode(event))

    assert definition["properties"]["type"]["const"] == event.type
    assert definition["additionalProperties"] is False
    assert set(definition["required"]) <= fields.keys() <= set(definition["properties"])
    assert "type" in definition["required"]  # decode() cannot pick a model without it


# -- hypothesis (R6) --------------------------------------------------------------------

_text = st.text(max_size=20)
_opt_text = st.none() | _text
_finite = st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _finite | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)
_envelope: dict[str, st.SearchStrategy[Any]] = {
    "run_id": st.text(min_size=1, max_size=128),
    "seq": st.integers(min_value=0, max_value=2**63 - 1),
    "ts": _finite,
    "thread_id": _opt_text,
    "agent": _opt_text,
    "causation_id": _opt_text,
    "node": _opt_text,
}
_usage = st.builds(Usage, input_tokens=st.integers(), output_tokens=st.integers(), total_tokens=st.integers())
_cost = st.builds(
    Cost,
    total_usd=_finite,
    unpriced_calls=st.integers(min_value=0),
    unpriced_tokens=st.integers(min_value=0),
    models=st.lists(
        st.builds(
            ModelCost, model=_opt_text, provider=_opt_text, calls=st.integers(), usage=_usage, usd=st.none() | _finite
        ),
        max_size=3,
    ).map(tuple),
)
_events: st.SearchStrategy[StreamEvent] = st.one_of(
    st.builds(
        StatusEvent,
        **_envelope,
        status=st.sampled_from(["started", "gap", "lagging", "missed"]),
        graph=_opt_text,
        detail=_opt_text,
        first_seq=st.none() | st.integers(),
    ),
    st.builds(
        AgentLifecycleEvent,
        **_envelope,
        phase=st.sampled_from(["started", "completed", "failed"]),
        duration_s=st.none() | _finite,
        error=_opt_text,
    ),
    st.builds(TokenEvent, **_envelope, message_id=_text, text=_text, kind=st.sampled_from(["text", "reasoning"])),
    st.builds(
        ToolCallEvent,
        **_envelope,
        phase=st.sampled_from(["start", "args", "end"]),
        tool_call_id=_text,
        name=_opt_text,
        message_id=_opt_text,
        args_delta=_opt_text,
        args=st.none() | st.dictionaries(_text, _json, max_size=4),
    ),
    st.builds(
        ToolResultEvent,
        **_envelope,
        tool_call_id=_text,
        name=_opt_text,
        output=_opt_text,
        error=_opt_text,
        truncated=st.none() | st.booleans(),
    ),
    st.builds(CustomEvent, **_envelope, name=_text, data=_json),
    st.builds(
        InterruptEvent,
        **_envelope,
        interrupts=st.lists(st.builds(InterruptInfo, id=_opt_text, value=_json), max_size=3).map(tuple),
    ),
    st.builds(ErrorEvent, **_envelope, message=_text, error_type=_text),
    st.builds(
        LLMCallEvent,
        **_envelope,
        message_id=_text,
        status=st.sampled_from(["success", "error", "cancelled"]),
        model=_opt_text,
        provider=_opt_text,
        duration_s=_finite,
        ttft_s=st.none() | _finite,
        usage=_usage,
        error_type=_opt_text,
        cost_usd=st.none() | _finite,
    ),
    st.builds(
        DoneEvent,
        **_envelope,
        status=st.sampled_from(["success", "error", "interrupted", "cancelled"]),
        usage=_usage,
        duration_s=_finite,
        trace_id=_opt_text,
        cost=st.none() | _cost,
    ),
)


@given(_events)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_generated_events_round_trip_exactly(event: StreamEvent) -> None:
    assert decode(encode(event)) == event
    assert encode(decode(encode(event))) == encode(event)


@given(_events)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_generated_events_round_trip_through_sse(event: StreamEvent) -> None:
    decoded = decode_sse(event.id, event.type, sse_data(event))

    if isinstance(event, TokenEvent):
        # Token frames drop the run-constant fields and keep milliseconds.
        expected = event.model_copy(update={"thread_id": None, "node": None, "causation_id": None})
        assert decoded == expected.model_copy(update={"ts": round(event.ts, 3)})
    else:
        assert decoded == event


def _attempt(call: Callable[[], StreamEvent]) -> StreamEvent | EventDecodeError:
    """Run ``call``; any exception other than EventDecodeError fails the test."""
    try:
        return call()
    except EventDecodeError as exc:
        return exc


def _check(result: StreamEvent | EventDecodeError) -> None:
    if isinstance(result, EventDecodeError):
        assert str(result), "an EventDecodeError must say what is wrong"
    else:
        assert result.type in EVENT_TYPES
        assert decode(encode(result)) == result


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_bytes_only_ever_raise_event_decode_error(data: bytes) -> None:
    _check(_attempt(lambda: decode(data)))


@given(_json)
@settings(max_examples=500)
def test_arbitrary_json_only_ever_raises_event_decode_error(value: Any) -> None:
    data = json.dumps(value)
    _check(_attempt(lambda: decode(data)))
    _check(_attempt(lambda: decode_sse(f"{RUN}:1", "custom", data)))


@given(
    st.one_of(
        st.text(max_size=40),
        st.builds("{}:{}".format, st.text(max_size=10), st.text(max_size=10)),
        # Anything Unicode calls a digit: "²", "٣", "𝟘" …
        st.builds("r:{}".format, st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3)),
    ),
    st.one_of(st.sampled_from(EVENT_TYPES), st.text(max_size=12)),
    st.one_of(st.binary(max_size=200), st.text(max_size=200), _json.map(json.dumps)),
)
@settings(max_examples=500)
def test_arbitrary_sse_frames_only_ever_raise_event_decode_error(event_id: str, event_type: str, data: Any) -> None:
    _check(_attempt(lambda: decode_sse(event_id, event_type, data)))


_mutations = st.one_of(
    st.tuples(st.just("delete"), _text, st.none()),
    st.tuples(st.just("set"), _text, _json),
    st.tuples(st.just("set"), st.sampled_from(["type", "v", "seq", "run_id", "ts", "text", "data", "usage"]), _json),
    st.tuples(st.just("set"), st.just("type"), st.sampled_from(EVENT_TYPES)),
)


@given(_events, st.lists(_mutations, min_size=1, max_size=4), st.integers(min_value=0, max_value=5))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_events_only_ever_raise_event_decode_error(
    event: StreamEvent, mutations: list[tuple[str, str, Any]], cut: int
) -> None:
    fields = json.loads(encode(event))
    for action, key, value in mutations:
        if action == "delete":
            fields.pop(key if key in fields else next(iter(fields)), None)
        else:
            fields[key] = value
    data = json.dumps(fields).encode()
    for candidate in (data, data[: len(data) - cut]):
        _check(_attempt(lambda candidate=candidate: decode(candidate)))


def test_token_frames_name_the_agent_once_per_message_and_the_decoder_restores_it() -> None:
    from kiki_events.core.runlog import RunLog
    from kiki_events.formats.kiki import FORMAT, SSEDecoder

    def token(seq: int, message_id: str, agent: str) -> TokenEvent:
        return TokenEvent(run_id="run", seq=seq, ts=1.0, agent=agent, message_id=message_id, text=f"t{seq}")

    events = [token(1, "m1", "writer"), token(2, "m1", "writer"), token(3, "m2", "research/researcher")]
    log = RunLog("run", 10)
    for event in events:
        log.append(event)
    frames, _ = log.read(0, 10)
    payloads = [FORMAT.encoder().encode(frame).split(b"data: ", 1)[1] for frame in frames]
    assert [b'"agent"' in p for p in payloads] == [True, False, True]

    decoder = SSEDecoder()
    decoded = [decoder.decode(e.id, "token", p.strip()) for e, p in zip(events, payloads, strict=True)]
    assert [e.agent for e in decoded] == ["writer", "writer", "research/researcher"]
