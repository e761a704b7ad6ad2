"""The engine's per-query events are built as plain payloads, without their pydantic models (a
twentieth of a zero-latency run's main thread): every such payload must be exactly what the model
would have dumped, defaults included, and a wrong field must still fail loudly."""

from __future__ import annotations

import pytest

from synthledger.engine.ledger.events import (Cost, ItemDone, QueryDispatched, QueryReserved, QuerySettled,
                                              parse_event, plain_cost, plain_payload, to_payload)
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
