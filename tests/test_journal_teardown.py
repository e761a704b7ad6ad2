"""The event writer at a run's teardown: a commit that a cancellation catches on its way to the
store still lands, and the journal knows it did. QA found a run that, torn down by a crashing batch
follower, spun at full CPU for ever in `close()`: the writer had taken events off its queue for a
commit, the cancellation arrived at the thread limiter's checkpoint before the commit began, and
the events were neither queued nor committed - so every flush waited for them, committing nothing."""

from __future__ import annotations

import anyio
import pytest

from synthledger.engine.ledger.events import RunStarted, RunWarning
from synthledger.engine.ledger.journal import Journal
from synthledger.store.eventstore import EventStore
from synthledger.store.records import owner_token


def _journal(tmp_path) -> tuple[EventStore, Journal]:
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    started = RunStarted(config={}, config_hash="c", plan_hash="", version="test", kind="generate", budget={})
    return store, Journal.start(store, "r", {}, "c", [started], kind="generate", owner=owner_token())


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_events_whose_commit_the_teardown_cancels_are_committed_and_close_returns(tmp_path, anyio_backend):
    store, journal = _journal(tmp_path)
    with anyio.fail_after(10):  # (it never returned)
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            await anyio.sleep(0.05)
            for i in range(50):
                journal.emit(RunWarning(kind="test", message=f"w{i}"))
            tg.cancel_scope.cancel()  # pending when the writer wakes to commit them
        await journal.close()
    assert journal.durable_seq == journal.last_seq == 51
    assert [e.type for e in store.iter_events(journal.run_id)].count("run_warning") == 50
    store.close()
