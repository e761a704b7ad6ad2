"""Prices: the config's [pricing] first, then genai-prices (offline data), recorded in the run; and
cached input tokens at their own price where the provider reports them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from synthledger.engine.ledger.pricing import BUILTIN, FREE, ModelPrice, price_for
from synthledger.plugins.teachers.openai_compatible import completion_from_openai
from synthledger.store.eventstore import EventStore
from synthledger.testing.projects import write_project
from synthledger.testing.server import ServerConfig, run_in_thread

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")
genai_prices = pytest.importorskip("genai_prices")


def test_config_then_genai_prices_then_nothing():
    mine = ModelPrice(1.0, 2.0, None, "config [pricing]")
    assert price_for("gpt-4o-mini", "openai", {"gpt-4o-mini": mine}) is mine
    assert price_for("anything", "local", {}) is FREE
    # a model the old six-entry table never had, priced from genai-prices' shipped data
    p = price_for("gpt-5-mini", "openai", {})
    assert p is not None and p.source.startswith("genai-prices") and p.input_per_mtok > 0
    assert p.cached_input_per_mtok is not None and p.cached_input_per_mtok < p.input_per_mtok
    assert "gpt-5-mini" not in BUILTIN
    claude = price_for("claude-sonnet-4-5", "anthropic", {})
    assert claude is not None and claude.output_per_mtok >= 15.0 and claude.tiers  # tiered by prompt size
    # a self-hosted OpenAI-compatible server is not priced as the hosted model of that name
    assert price_for("gpt-4o-mini", "openai-compatible", {}, "http://127.0.0.1:8000/v1") is None
    assert price_for("gpt-4o-mini", "openai-compatible", {}, "https://api.openai.com/v1") is not None
    assert price_for("no-such-model-xyz", "openai", {}) is None


def test_a_private_address_is_not_priced_and_does_not_load_genai_prices():
    """Loading genai-prices costs a third of a second of start-up; a server on this machine or a
    private network could only be answered "unknown" by it."""
    code = ("import sys; from synthledger.engine.ledger.pricing import price_for\n"
            "for url in ['http://localhost:8000/v1', 'http://10.1.2.3/v1', 'http://[::1]:9/v1', 'http://192.168.0.7/v1']:\n"
            "    assert price_for('gpt-4o-mini', 'openai-compatible', {}, url) is None, url\n"
            "print('genai_prices' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cached_input_tokens_cost_their_own_price():
    p = ModelPrice(input_per_mtok=2.0, output_per_mtok=8.0, cached_input_per_mtok=0.5)
    assert p.cost(1_000_000, 0, 400_000) == pytest.approx(600_000 * 2.0 / 1e6 + 400_000 * 0.5 / 1e6)
    assert p.cost(1000, 100) == pytest.approx((1000 * 2.0 + 100 * 8.0) / 1e6)
    flat = ModelPrice(2.0, 8.0)  # no cached price: cached tokens cost what input costs
    assert flat.cost(1000, 0, 900) == flat.cost(1000, 0)


def test_providers_read_cached_tokens_from_usage():
    body = {"choices": [{"index": 0, "message": {"content": "4"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1024}}}
    assert completion_from_openai(body).usage.cached_input_tokens == 1024
    del body["usage"]["prompt_tokens_details"]
    assert completion_from_openai(body).usage.cached_input_tokens == 0

    from synthledger.plugins.teachers.anthropic_messages import _extract

    msg = SimpleNamespace(content=[SimpleNamespace(type="text", text="4")], stop_reason="end_turn", model="c",
                          usage=SimpleNamespace(input_tokens=176, output_tokens=5, cache_read_input_tokens=1024,
                                                cache_creation_input_tokens=0))
    usage = _extract(msg).usage
    assert (usage.input_tokens, usage.cached_input_tokens) == (1200, 1024)


def _generate(project: Path, url: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "sk-test", **env}
    full.pop("SYNTHLEDGER_STORE", None)
    return subprocess.run([sys.executable, CLI, "generate", "-c", "run.toml", "--no-progress", "--store", url],
                          capture_output=True, text=True, env=full, cwd=project, timeout=120)


def test_a_usd_budget_on_a_model_only_genai_prices_knows_records_the_price(tmp_path):
    """gpt-5-mini is not in the built-in table: the run is priced from genai-prices, and says so."""
    with run_in_thread(models=("gpt-5-mini",)) as srv:
        cfg = write_project(tmp_path, srv.url, name="priced", seeds=2, queries=1)
        text = cfg.read_text().replace('provider = "openai-compatible"', 'provider = "openai"')
        cfg.write_text(text.replace('model = "test-teacher"', 'model = "gpt-5-mini"').replace("queries = 1\n",
                                                                                              "usd = 0.001\n"))
        r = _generate(tmp_path, f"sqlite:///{tmp_path / 's.db'}", {})
    assert r.returncode == 0, r.stderr
    st = EventStore(f"sqlite:///{tmp_path / 's.db'}", must_exist=True)
    run = st.list_runs()[0]
    started = next(st.iter_events(run.id, types=["run_started"])).payload
    price = started["prices"]["gpt-5-mini"]
    assert price["source"].startswith("genai-prices") and price["input_per_mtok"] > 0
    settled = [e.payload for e in st.iter_events(run.id, types=["query_settled"])]
    assert settled and all(p["actual"]["usd"] == pytest.approx(
        (p["actual"]["input_tokens"] * price["input_per_mtok"] + p["actual"]["output_tokens"] * price["output_per_mtok"])
        / 1e6) for p in settled)
    st.close()


@pytest.mark.skipif("prompt_cache" not in {f.name for f in dataclasses.fields(ServerConfig)},
                    reason="this test server reports no prompt-cache usage yet (the eff branch adds it)")
def test_cached_prompt_tokens_are_settled_at_the_cached_price(tmp_path):
    with run_in_thread(prompt_cache=True) as srv:
        cfg = write_project(tmp_path, srv.url, name="cache", seeds=1, queries=4,
                            extra='\n[pricing."test-teacher"]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n'
                                  'cached_input_per_mtok = 0.5\n')
        r = _generate(tmp_path, f"sqlite:///{tmp_path / 's.db'}", {})
        served_cached = srv.stats().get("cached_tokens", 0)
    assert r.returncode == 0, r.stderr
    st = EventStore(f"sqlite:///{tmp_path / 's.db'}", must_exist=True)
    run = st.list_runs()[0]
    settled = [e.payload for e in st.iter_events(run.id, types=["query_settled"])]
    assert sum(p["cached_input_tokens"] for p in settled) == served_cached
    for p in settled:
        a, c = p["actual"], p["cached_input_tokens"]
        assert a["usd"] == pytest.approx(((a["input_tokens"] - c) * 2.0 + c * 0.5 + a["output_tokens"] * 8.0) / 1e6)
    st.close()


@pytest.mark.parametrize("prompt", [248, 200_000, 200_001, 250_000])
def test_a_tiered_price_charges_each_call_at_its_prompts_tier_as_genai_prices_does(prompt):
    # QA: every call was charged at the highest tier (claude-sonnet-4-5's prompts over 200K tokens):
    # $0.0027 for a call genai-prices prices at $0.001569, a dollar budget buying 40% fewer queries.
    claude = price_for("claude-sonnet-4-5", "anthropic", {})
    expected = genai_prices.calc_price(genai_prices.Usage(input_tokens=prompt, output_tokens=55),
                                       "claude-sonnet-4-5", provider_id="anthropic").total_price
    assert claude.cost(prompt, 55) == pytest.approx(float(expected), rel=1e-9)
    # A worst case bounds the call: tiers only raise rates, and a share is priced at its request's tier.
    assert claude.cost(prompt + 1000, 64) >= claude.cost(prompt, 55)
    from synthledger.engine.run.samples import shares
    assert sum(a.usd for a in shares(prompt, [55] * 4, claude)) == pytest.approx(claude.cost(prompt, 220), rel=1e-9)
    assert claude.scaled(0.5, "batch").cost(prompt, 55) == pytest.approx(claude.cost(prompt, 55) / 2)
