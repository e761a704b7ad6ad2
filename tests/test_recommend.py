import pytest

from synthledger.engine.recommend import crossover, recommend
from synthledger.plugins.strategies import Mix


def test_low_budget_ratio_recommends_answer_augmentation():
    rec = recommend(seeds=100, budget=500)
    assert rec.strategy == "answer_augmentation" and rec.fractions is None
    assert rec.ratio == 5.0
    assert any("BR = 500/100 = 5.0" in r for r in rec.reasons)


def test_high_ratio_depends_on_the_augmenter():
    assert recommend(100, 20_000, augmenter="strong").strategy == "new_question"
    assert recommend(100, 20_000, augmenter="weak").strategy == "question_rephrase"


def test_intermediate_band_gives_a_mix_that_shifts_with_the_ratio():
    low = recommend(100, 3_000)
    high = recommend(100, 4_800)
    for rec in (low, high):
        assert rec.strategy == "mix"
        assert set(rec.fractions) == {"answer_augmentation", "new_question"}
        assert sum(rec.fractions.values()) == pytest.approx(1.0)
    assert high.fractions["new_question"] > low.fractions["new_question"]
    weak = recommend(100, 3_500, augmenter="weak")
    assert set(weak.fractions) == {"answer_augmentation", "question_rephrase"}


def test_mix_recommendation_is_a_valid_strategy_config():
    config = recommend(100, 3_500).strategy_config()
    assert config["name"] == "mix"
    options = Mix.Options(parts=config["parts"])  # fractions sum to 1 as the mix demands
    assert [p.name for p in options.parts] == ["answer_augmentation", "new_question"]
    assert recommend(10, 10).strategy_config() == {"name": "answer_augmentation"}


def test_crossover_follows_the_reported_points_and_falls_with_seed_set_size():
    assert 27 <= crossover(100).value <= 51
    assert crossover(1000).value == 17.6
    assert crossover(7473).value == 16.4
    sizes = [10, 100, 200, 500, 1000, 3000, 7473, 50_000]
    values = [crossover(s).value for s in sizes]
    assert values == sorted(values, reverse=True)
    assert crossover(10).value == crossover(100).value  # held, not extrapolated
    assert "interpolated" in crossover(300).source
    assert "2409.19759" in crossover(1000).source


def test_the_same_ratio_flips_with_seed_set_size():
    # BR 25 is below the crossover for 100 seeds but above it for 1,000.
    assert recommend(100, 2_500).strategy in ("answer_augmentation", "mix")
    assert recommend(100, 2_500).fractions is None or recommend(100, 2_500).fractions["answer_augmentation"] > 0.5
    big = recommend(1000, 25_000)
    assert big.strategy == "new_question"
    assert any("matters much less" in r for r in big.reasons)
    assert not any("matters much less" in r for r in recommend(100, 25_000).reasons)


def test_thresholds_carry_their_sources():
    rec = recommend(300, 6_000)
    assert {"crossover_br", "mix_band_low", "mix_band_high", "crossover_br_mistral_student"} <= set(rec.thresholds)
    assert rec.thresholds["mix_band_low"].value < rec.thresholds["crossover_br"].value < rec.thresholds["mix_band_high"].value
    assert rec.thresholds["crossover_br_mistral_student"].value == 12
    assert all(t.source for t in rec.thresholds.values())
    assert any("starting points" in r for r in rec.reasons)


def test_verification_only_when_free():
    assert recommend(100, 500, verifiable=True).verifier == "final_answer"
    assert recommend(100, 20_000, augmenter="weak", verifiable=True).verifier == "final_answer"
    nq = recommend(100, 20_000, verifiable=True)
    assert nq.verifier == "none"
    assert any("more data" in r for r in nq.reasons)
    assert recommend(100, 500, verifiable=False).verifier == "none"
    assert recommend(100, 500).verifier == "none"


@pytest.mark.parametrize("kwargs", [{"seeds": 0, "budget": 10}, {"seeds": 5, "budget": 0},
                                    {"seeds": 5, "budget": 10, "augmenter": "medium"}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        recommend(**kwargs)


@pytest.mark.parametrize("budget", [500, 3_000, 20_000])
def test_render_reads_as_text_and_its_strategy_block_is_valid_config(budget):
    import subprocess
    import sys
    from synthledger.engine.run.config import tomllib
    from pathlib import Path

    rec = recommend(100, budget)
    text = rec.render()
    assert text.splitlines()[0].startswith("recommended: ") and "Recommendation(" not in text
    block = text.split("\n\n")[1]  # the [strategy] section, to paste into a run config
    section = tomllib.loads(block)["strategy"]
    assert section == rec.strategy_config()
    if section["name"] == "mix":
        Mix.Options.model_validate({k: v for k, v in section.items() if k != "name"})
    cli = Path(__file__).resolve().parents[1] / "cli.py"
    shown = subprocess.run([sys.executable, str(cli), "recommend", "--seeds", "100", "--budget", str(budget)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "[strategy]" in shown.stdout and "Recommendation(" not in shown.stdout


def test_the_pasted_advice_spends_q_on_teacher_answers(tmp_path):
    # BR is teacher answers per seed, as the research counts Q. The advice printed only [strategy], and
    # a run config's default budget counts every role: new questions then got a third of the answers.
    import json
    import subprocess
    import sys
    from pathlib import Path

    from synthledger.engine.run.config import config_from_dict, tomllib
    from synthledger.engine.run.launch import generate
    from synthledger.store.eventstore import EventStore
    from synthledger.testing.server import run_in_thread

    cli = Path(__file__).resolve().parents[1] / "cli.py"
    shown = subprocess.run([sys.executable, str(cli), "recommend", "--seeds", "1", "--budget", "60"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    advice = tomllib.loads(shown.stdout.split("\nwhy:")[0].split("\n", 1)[1])
    assert advice["strategy"] == {"name": "new_question"}
    assert advice["budget"] == {"queries": 60, "counted_roles": ["teacher"]}
    (tmp_path / "seeds.jsonl").write_text(json.dumps({"question": "Ann has 3 pens and buys 4. How many pens?",
                                                      "answer": "#### 7"}) + "\n")
    with run_in_thread() as srv:
        raw = {"run": {"name": "advised", "store": f"sqlite:///{tmp_path / 's.db'}"},
               "seeds": {"source": "jsonl", "path": str(tmp_path / "seeds.jsonl")},
               "teacher": {"provider": "openai-compatible", "base_url": srv.url + "/v1", "model": "t", "max_tokens": 64},
               "augmenter": {"provider": "openai-compatible", "base_url": srv.url + "/v1", "model": "a",
                             "max_tokens": 64},
               "limits": {"max_concurrency": 16}, **advice}
        result = generate(config_from_dict(raw), show_progress=False)
    reserved = [e.payload for e in EventStore(raw["run"]["store"]).iter_events(result.run_id, types=["query_reserved"])]
    assert result.status == "budget_exhausted"
    assert sum(1 for p in reserved if p["role"] == "teacher") == 60


def _measured(aa: tuple[float, float, float], nq: tuple[float, float, float], support: float = 0.98) -> dict:
    """An experiment's result: crossover BR 1.4 at |S|=4, and the cells at Q=16 (BR 4)."""
    row = lambda name, v: {"strategy": name, "seed_size": 4, "budget": 16, "accuracy": v[0], "ci_low": v[1],
                           "ci_high": v[2]}
    return {"experiment": {"name": "g6", "id": "e1", "status": "completed"},
            "crossovers": [{"seed_size": 4, "ratio": 1.4, "ci_low": 1.2, "ci_high": 1.7, "support": support,
                            "note": ""}],
            "summary": [row("answer_augmentation", aa), row("new_question", nq)]}


def test_advice_at_a_point_the_grid_measured_follows_that_measurement():
    # QA: the first sign change put the crossover at BR 1.4 and the advice at |S|=4, Q=16 said
    # new_question, though there answer augmentation had measured 23.3% against 10%.
    from synthledger.engine.experiment.advice import recommend_from

    clear = recommend_from(_measured((0.233, 0.15, 0.32), (0.10, 0.03, 0.14)), seeds=4, budget=16)
    assert clear.strategy == "answer_augmentation" and clear.fractions is None
    assert "answer_augmentation is measured best here" in clear.reasons[0] and "23.3%" in clear.reasons[0]
    overlap = recommend_from(_measured((0.20, 0.10, 0.30), (0.15, 0.05, 0.25)), seeds=4, budget=16)
    assert overlap.strategy == "new_question" and "intervals overlap" in overlap.reasons[0]
    elsewhere = recommend_from(_measured((0.233, 0.15, 0.32), (0.10, 0.03, 0.14)), seeds=4, budget=12)
    assert elsewhere.strategy == "new_question" and not any("measured best" in r for r in elsewhere.reasons)


def test_a_crossover_few_bootstrap_draws_found_is_called_weak():
    from synthledger.engine.experiment.advice import recommend_from

    weak = recommend_from(_measured((0.2, 0.1, 0.3), (0.15, 0.05, 0.25), support=0.56), seeds=4, budget=12)
    assert any("found in 56% of bootstrap draws; a weak measurement" in r for r in weak.reasons)
    strong = recommend_from(_measured((0.2, 0.1, 0.3), (0.15, 0.05, 0.25), support=0.97), seeds=4, budget=12)
    assert any("found in 97% of bootstrap draws" in r and "weak" not in r for r in strong.reasons)


def test_advice_from_an_experiment_counts_q_as_the_experiment_counted_its_budgets():
    # QA: a grid whose base config counted every role measured its crossover in those units, and the
    # advice applied it as teacher answers, printing `counted_roles = ["teacher"]`.
    from synthledger.engine.experiment.advice import recommend_from

    every = _measured((0.2, 0.1, 0.3), (0.15, 0.05, 0.25))
    every["experiment"]["counted_roles"] = None
    rec = recommend_from(every, seeds=4, budget=12)
    assert rec.strategy == "new_question" and rec.budget_config() == {"queries": 12}
    assert "counted_roles" not in rec.render() and any("Q counts the queries of every role" in r for r in rec.reasons)
    teacher = _measured((0.2, 0.1, 0.3), (0.15, 0.05, 0.25))
    teacher["experiment"]["counted_roles"] = ["teacher"]
    rec = recommend_from(teacher, seeds=4, budget=12)
    assert rec.budget_config() == {"queries": 12, "counted_roles": ["teacher"]}
    assert 'counted_roles = ["teacher"]' in rec.render()


def test_advice_of_a_strategy_the_grid_never_ran_says_it_is_not_measured():
    from synthledger.engine.experiment.advice import recommend_from

    rec = recommend_from(_measured((0.2, 0.1, 0.3), (0.15, 0.05, 0.25)), seeds=4, budget=12, augmenter="weak")
    assert rec.strategy == "question_rephrase"
    assert any(r.startswith("question_rephrase was not in experiment g6's grid") for r in rec.reasons)
    strong = recommend_from(_measured((0.2, 0.1, 0.3), (0.15, 0.05, 0.25)), seeds=4, budget=12)
    assert not any("was not in experiment" in r for r in strong.reasons)


@pytest.mark.parametrize("budget", ["9" * 330, "99999999999999999999"])
def test_a_budget_no_config_can_hold_is_one_line(budget):
    """A 330-digit budget overflowed a float (a traceback); a 20-digit one was recommended as a
    config that `generate` then refused (at most 2**63 - 1)."""
    import subprocess
    import sys
    from pathlib import Path

    cli = Path(__file__).resolve().parents[1] / "cli.py"
    r = subprocess.run([sys.executable, str(cli), "recommend", "--seeds", "1", "--budget", budget],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not r.stdout, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--budget" in r.stderr
