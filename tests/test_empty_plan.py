"""A run whose strategy plans nothing ends `completed` having asked nothing; before, it said only
"the plan is complete", and a user could not tell an empty dataset from a finished one. Now a run
warning says why as far as the engine knows (the strategy, how many seeds, from where), recorded so
that the live view and `show` give it, and the run's message and last line say the plan was empty.

The built-in strategies always plan items for one seed or more, and a seed source that gives none
is refused before a run starts ([seeds] ... produced no seeds); so the empty plan is a third-party
strategy's, registered here as an installed plugin's would be."""

from __future__ import annotations

import types
from typing import Any, ClassVar, Iterator

import pytest

from synthledger.engine import host
from synthledger.engine.api import PlanItem, PluginOptions, Strategy
from synthledger.engine.hookspecs import hookimpl
from synthledger.engine.output.summary import summarize
from synthledger.engine.run.config import load_config
from synthledger.engine.run.launch import generate
from synthledger.store.eventstore import EventStore
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread


class PlansNothing(Strategy):
    """Plans an item only for seeds whose question holds `keyword`: none of these seeds does."""

    name: ClassVar[str] = "keyword_only"
    roles: ClassVar[tuple[str, ...]] = ("teacher",)

    class Options(PluginOptions):
        keyword: str = "integral"

    def plan(self) -> Iterator[PlanItem]:
        for seed in self.seeds:
            if self.options.keyword in seed.question:
                yield PlanItem(key=f"kw:{seed.id}", strategy=self.name, seed=seed)

    async def run(self, item: PlanItem, ctx: Any) -> None:  # never reached
        raise AssertionError("an empty plan has no item to run")


@pytest.fixture(scope="module")
def server():
    with run_in_thread() as srv:
        yield srv


@pytest.fixture
def keyword_plugin():
    module = types.ModuleType("keyword_plugin")
    module.register_strategies = hookimpl(lambda register: register("keyword_only", PlansNothing))
    host.get_host().add(module, "keyword_plugin", "keyword-strategies", "0.2")
    yield
    host.reset_host()


def test_an_empty_plan_is_said_in_a_warning_the_message_and_the_last_line(tmp_path, server, keyword_plugin, capsys):
    config = write_project(tmp_path, server.url, name="nothing-to-do", seeds=3, strategy="keyword_only")
    url = f"sqlite:///{tmp_path / 's.db'}"
    before = server.stats()["received"]
    result = generate(load_config(config), url, show_progress=False)
    assert server.stats()["received"] == before

    assert result.ok and result.status == "completed"  # nothing went wrong: there was nothing to do
    assert result.message == "the plan had no items; nothing was asked"
    assert result.summary.startswith("nothing-to-do: completed (the plan had no items) after "), result.summary

    store = EventStore(url)
    warnings = [e.payload for e in store.iter_events(result.run_id, types=["run_warning"])]
    expected = ("the plan has no items: strategy 'keyword_only' (plugin keyword_plugin from keyword-strategies 0.2) "
                "planned nothing for 3 seeds from seeds.jsonl (jsonl), so nothing was asked and the dataset is "
                "empty; check the strategy's options")
    assert warnings == [{"kind": "empty_plan", "message": expected}]
    assert f"warning: {expected}" in " ".join(capsys.readouterr().err.split())  # said as it happened
    shown = summarize(store, store.get_run(result.run_id))  # `show` and `show --json`
    assert shown["status"] == "completed" and {"kind": "empty_plan", "message": expected} in shown["data_quality"]["warnings"]
    assert shown["message"] == result.message


def test_a_plan_with_items_still_just_completes(tmp_path, server):
    config = write_project(tmp_path, server.url, name="something-to-do", seeds=2, queries=8,
                           extra="samples_per_seed = 1\n")
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = generate(load_config(config), url, show_progress=False)
    assert result.status == "completed" and result.message == "the plan is complete", result.message
    assert "(the plan had no items)" not in result.summary
    kinds = [e.payload["kind"] for e in EventStore(url).iter_events(result.run_id, types=["run_warning"])]
    assert "empty_plan" not in kinds
