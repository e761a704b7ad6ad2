"""Who hears which event: a subscriber that names types hears those only, in order, as they are
emitted; one that names none hears all. (A run emits six events a query, and the live view reads
one or two kinds of them: calling it with the rest was ~1% of a zero-latency run.)"""

from __future__ import annotations

from synthledger.engine.ledger.budget import BudgetSpec
from synthledger.engine.ledger.events import RateAdjusted, RunStarted, RunWarning, SampleRejected
from synthledger.engine.ledger.journal import Journal
from synthledger.engine.ledger.ledger import Ledger
from synthledger.engine.run.progress import RunProgress
from synthledger.store.eventstore import EventStore
from synthledger.store.records import owner_token


def _journal(tmp_path) -> tuple[EventStore, Journal]:
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    started = RunStarted(config={}, config_hash="c", plan_hash="", version="test", kind="generate", budget={})
    return store, Journal.start(store, "r", {}, "c", [started], kind="generate", owner=owner_token(),
                                durable_each=True)


def test_a_subscriber_hears_the_types_it_names_and_one_that_names_none_hears_all(tmp_path):
    store, journal = _journal(tmp_path)
    everything, warnings = [], []
    journal.subscribe(lambda seq, t, p: everything.append((seq, t)))
    journal.subscribe(lambda seq, t, p: warnings.append((seq, p["message"])), {RunWarning.TYPE})
    journal.emit(RunWarning(kind="test", message="one"))
    journal.emit(RateAdjusted(model="m", note="slower", rpm=None, tpm=None, factor=0.5))
    late = []  # a subscriber added later hears what follows, with its own types
    journal.subscribe(lambda seq, t, p: late.append(t), {RateAdjusted.TYPE})
    journal.emit(RunWarning(kind="test", message="two"))
    journal.emit(RateAdjusted(model="m", note="faster", rpm=None, tpm=None, factor=1.0))
    assert everything == [(2, "run_warning"), (3, "rate_adjusted"), (4, "run_warning"), (5, "rate_adjusted")]
    assert warnings == [(2, "one"), (4, "two")]
    assert late == ["rate_adjusted"]
    store.close()


def test_the_live_view_hears_every_kind_it_counts(tmp_path):
    """The view's types are what it reads: rejections counted, warnings kept, the last error shown."""
    store, journal = _journal(tmp_path)
    view = RunProgress(Ledger(BudgetSpec()), "r", enabled=False)
    journal.subscribe(view.on_event, RunProgress.EVENTS)
    journal.emit(SampleRejected(item="i", strategy="s", stage="failed", reason="the teacher kept failing"))
    journal.emit(RunWarning(kind="test", message="watch out"))
    assert (view.rejected, view.warnings) == (1, ["watch out"])
    assert view.last_error is not None and view.last_error[1] == "the teacher kept failing"
    store.close()
