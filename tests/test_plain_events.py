"""The engine's per-query events are built as plain payloads, without their pydantic models (a
twentieth of a zero-latency run's main thread): every such payload must be exactly what the model
would have dumped, defaults included, and a wrong field must still fail loudly."""

from __future__ import annotations

import pytest

from synthledger.engine.ledger.events import (Cost, ItemDone, QueryDispatched, QueryReserved, QuerySettled,
                                              SampleAccepted, SampleProposed, SampleRejected, is_plain_json, parse_event,
                                              plain_cost, plain_payload, to_payload)
from synthledger.engine.ledger.ledger import Amount

COST = {"queries": 1, "input_tokens": 38, "output_tokens": 16, "usd": 0.0012}

CASES = [
    (QueryReserved, {"query_id": "q1", "attempt": 1, "key": "k" * 64, "role": "teacher", "purpose": "answer",
                     "strategy": "answer_augmentation", "item": "aa:1:0", "provider": "openai", "model": "gpt",
                     "worst": COST, "messages": [{"role": "user", "content": "2+2?"}],
                     "params": {"max_tokens": 16, "n": 1, "temperature": 0.7, "stop": ["\n\n"]}}),
    (QueryReserved, {"query_id": "q1", "attempt": 2, "key": "k" * 64, "role": "teacher", "purpose": "answer",
                     "strategy": "answer_augmentation", "item": "aa:1:0", "provider": "openai", "model": "gpt",
                     "worst": COST}),  # a retry: messages and params left at their defaults
    (QueryDispatched, {"query_id": "q1", "attempt": 1}),
    (QueryDispatched, {"query_id": "q1", "attempt": 1, "request": "q0"}),
    (QuerySettled, {"query_id": "q1", "attempt": 1, "actual": COST, "text": "4", "finish_reason": "stop",
                    "latency_s": 0.0123, "cached_input_tokens": 0,
                    "shared": {"request": "q0", "n": 2, "input_tokens": 38, "output_tokens": 30}}),
    (QuerySettled, {"query_id": "q1", "attempt": 1, "actual": COST, "text": ""}),
    (ItemDone, {"item": "aa:1:0", "strategy": "answer_augmentation", "outcome": "accepted"}),
    (SampleProposed, {"sample_id": "s-aa:1:0", "item": "aa:1:0", "strategy": "answer_augmentation", "seed_id": "1",
                      "question": "2+2?", "answer": "4\n#### 4", "reference": "4", "query_ids": ["q1"],
                      "roles": {"q1": "teacher"}, "models": {"teacher": "gpt"},
                      "meta": {"final": "4", "sample_index": 0, "score": 0.5, "tags": ["a", None, True]},
                      "finish_reason": "stop", "finish_reasons": {"q1": "stop"}, "answer_query_id": "q1"}),
    (SampleProposed, {"sample_id": "s-x", "item": "x", "strategy": "rephrase", "seed_id": None, "question": "q",
                      "answer": "a"}),
    (SampleAccepted, {"sample_id": "s-x", "reason": "agrees", "details": {"votes": [1, 2]}, "query_ids": ["q2"]}),
    (SampleRejected, {"sample_id": "s-x", "item": "x", "strategy": "answer_augmentation", "stage": "quality",
                      "kind": "truncated", "reason": "truncated: cut off at max_tokens",
                      "details": {"query_id": "q1", "role": "teacher"}, "question": "2+2?"}),
]


@pytest.mark.parametrize("cls,values", CASES)
def test_a_plain_payload_is_what_the_model_dumps(cls, values):
    typed = to_payload(cls(**values))
    plain = plain_payload(cls, **values)
    assert plain == typed
    assert type(plain[1]) is dict and plain[1] is not values
    parse_event(*plain)  # and it reads back as the event


def test_defaults_are_fresh_copies():
    _, a = plain_payload(QueryDispatched, query_id="q1", attempt=1)
    _, b = plain_payload(QueryReserved, **CASES[1][1])
    assert a["request"] is None and b["messages"] is None
    from synthledger.engine.ledger.events import SampleAccepted
    _, x = plain_payload(SampleAccepted, sample_id="s")
    _, y = plain_payload(SampleAccepted, sample_id="s")
    x["query_ids"].append("q")
    assert y["query_ids"] == []


def test_a_missing_or_unknown_field_fails_loudly():
    with pytest.raises(TypeError, match="attempt is required"):
        plain_payload(QueryDispatched, query_id="q1")
    with pytest.raises(TypeError, match="has no field atempt"):
        plain_payload(QueryDispatched, query_id="q1", attempt=1, atempt=2)


def test_a_cost_is_its_dumped_dict_with_usd_a_float():
    amount = Amount(queries=1, input_tokens=38, output_tokens=16, usd=0)
    assert plain_cost(**amount.as_dict()) == Cost(**amount.as_dict()).model_dump()
    assert type(plain_cost(**amount.as_dict())["usd"]) is float


@pytest.mark.parametrize("value, plain", [
    ({"a": [1, 2.5, "x", None, False, {"b": []}]}, True),
    ({"a": (1, 2)}, False),  # the model dumps a tuple as a list: it must take the model's path
    ({1: "x"}, False),
    ({"a": float("inf")}, False),
    ({"a": {1, 2}}, False),
    ({"a": object()}, False),
])
def test_only_plain_json_plugin_data_skips_the_model(value, plain):
    """A strategy's or verifier's data may take the plain path only when it needs no converting."""
    assert is_plain_json(value) is plain
