"""`show`'s acceptance_rate is accepted / proposed, as its name and the `proposed` beside it say.

It was accepted / (accepted + rejected): a stopped run's undecided samples were left out, and
rejections of items that never made a sample (a failed query, a reply with nothing to parse) were
counted in, so the rate agreed with neither figure printed beside it."""

from __future__ import annotations

from synthledger.engine.output.summary import summarize
from synthledger.store.eventstore import EventStore, NewEvent
from synthledger.store.hashing import GENESIS


def proposed(n: int) -> NewEvent:
    return NewEvent("sample_proposed", {"sample_id": f"s-{n}", "item": f"i{n}", "strategy": "answer_augmentation",
                                        "seed_id": str(n), "question": f"What is {n} + 1?",
                                        "answer": f"#### {n + 1}", "reference": str(n + 1)})


def test_acceptance_rate_is_accepted_of_proposed_with_undecided_and_sampleless_rejections(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run("stopped", {}, "h")
    events = [NewEvent("run_started", {"config": {}, "budget": {"total": {"queries": 10}}}),
              *(proposed(n) for n in range(4)),
              NewEvent("sample_accepted", {"sample_id": "s-0"}),
              NewEvent("sample_accepted", {"sample_id": "s-1"}),
              NewEvent("sample_rejected", {"sample_id": "s-2", "item": "i2", "strategy": "answer_augmentation",
                                           "stage": "verification", "reason": "final answer differs"}),
              # s-3 is undecided (the run was stopped); two items failed before making a sample
              *(NewEvent("sample_rejected", {"item": f"i{n}", "strategy": "answer_augmentation", "stage": "failed",
                                             "reason": "teacher unreachable"}) for n in (4, 5))]
    store.append(run_id, events, 0, GENESIS)
    samples = summarize(store, store.get_run(run_id))["samples"]
    assert (samples["accepted"], samples["proposed"]) == (2, 4)
    assert samples["acceptance_rate"] == 0.5  # 2 of 4 proposed (it said 0.4: 2 of 2 + 3 rejected)


def test_a_run_that_proposed_nothing_has_no_rate(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run("idle", {}, "h")
    failed = NewEvent("sample_rejected", {"item": "i0", "strategy": "answer_augmentation", "stage": "failed",
                                          "reason": "teacher unreachable"})
    store.append(run_id, [NewEvent("run_started", {"config": {}}), failed], 0, GENESIS)
    samples = summarize(store, store.get_run(run_id))["samples"]
    assert samples["proposed"] == 0 and samples["acceptance_rate"] is None  # (it said 0.0)


def test_a_sample_proposed_again_by_a_resume_is_one_sample(tmp_path):
    """Stopped during verification, an item has a proposal and no item_done: a resume runs it again and
    it proposes its sample again. Still one sample (QA: `accepted 4, proposed 8, acceptance_rate 0.5`
    and 8 answers in data quality, where 4 of 4 were accepted)."""
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run("resumed", {}, "h")
    events = [NewEvent("run_started", {"config": {}, "budget": {"total": {"queries": 10}}}),
              *(proposed(n) for n in range(2)),
              NewEvent("run_finished", {"status": "interrupted"}),
              NewEvent("run_resumed", {}),
              *(proposed(n) for n in range(2)),
              *(NewEvent("sample_accepted", {"sample_id": f"s-{n}"}) for n in range(2)),
              *(NewEvent("item_done", {"item": f"i{n}", "strategy": "answer_augmentation", "outcome": "accepted"})
                for n in range(2))]
    store.append(run_id, events, 0, GENESIS)
    summary = summarize(store, store.get_run(run_id))
    samples = summary["samples"]
    assert (samples["accepted"], samples["proposed"], samples["acceptance_rate"]) == (2, 2, 1.0)
    assert summary["data_quality"]["overall"]["answers"] == 2
