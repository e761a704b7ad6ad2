"""Held-out sets and the accuracy evaluator (batched greedy generation, adapters, predictions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest

from synthledger.engine.api import Task
from synthledger.plugins.evaluators import AccuracyEvaluator, HeldoutError, load_heldout
from synthledger.plugins.evaluators.heldout import GSM8K_TEST_ROWS
from synthledger.plugins.tasks.numeric import GSM8KTask
from synthledger.testing.tiny_model import build_tiny_llama


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.getbasetemp() / "tiny-llama")


class ExactTask(Task):
    """The whole reply is the answer: lets a test know the right answer for a random model."""

    name: ClassVar[str] = "exact"

    def extract(self, text: str) -> str | None:
        return text.strip() or None

    def equivalent(self, a: str | None, b: str | None) -> bool:
        return a is not None and a == b


def test_gsm8k_test_split_is_complete() -> None:
    rows = load_heldout("gsm8k")
    assert len(rows) == GSM8K_TEST_ROWS == 1319
    assert rows[0]["answer"] == "18" and rows[0]["question"].startswith("Janet")
    assert all(r["answer"].lstrip("-").replace(".", "", 1).isdigit() for r in rows)
    assert len(load_heldout("gsm8k", limit=5)) == 5


def test_reasoning_gym_set_is_reproducible_and_sized() -> None:
    a = load_heldout("reasoning-gym:gsm_symbolic:7", limit=12)
    assert a == load_heldout("reasoning-gym:gsm_symbolic:7", limit=12)
    assert len(a) == 12 and all(r["question"] and r["answer"] for r in a)
    assert a != load_heldout("reasoning-gym:gsm_symbolic:8", limit=12)


def test_overlap_with_training_seeds_is_an_error_naming_the_count() -> None:
    heldout = load_heldout("reasoning-gym:gsm_symbolic:3", limit=30)
    training = {heldout[4]["question"], "  " + heldout[9]["question"].upper() + " ", "unrelated question"}
    with pytest.raises(HeldoutError, match=r"2 of 30 questions also appear in the training seeds"):
        load_heldout("reasoning-gym:gsm_symbolic:3", limit=30, exclude_questions=training)
    kept = load_heldout("reasoning-gym:gsm_symbolic:3", limit=30, exclude_questions=training, on_overlap="drop")
    assert len(kept) == 30 and not {heldout[4]["question"], heldout[9]["question"]} & {r["question"] for r in kept}
    with pytest.raises(HeldoutError, match="1 of 1319"):
        load_heldout("gsm8k", exclude_questions={load_heldout("gsm8k", 1)[0]["question"]})


def test_jsonl_sets_report_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "h.jsonl"
    good.write_text('{"question": "2+2?", "answer": 4}\n\n{"question": "3+3?", "answer": "6"}\n')
    assert load_heldout(str(good)) == [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "1"}\n{"question": "b"}\n')
    with pytest.raises(HeldoutError, match=rf"{bad}, line 2: key 'answer' is missing"):
        load_heldout(str(bad))
    (tmp_path / "broken.jsonl").write_text("{oops\n")
    with pytest.raises(HeldoutError, match="broken.jsonl, line 1: bad JSON"):
        load_heldout("broken.jsonl", base_dir=tmp_path)
    with pytest.raises(HeldoutError, match="expected reasoning-gym"):
        load_heldout("whatever")


def _greedy_reply(folder: Path, question: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batched_evaluation_scores_and_writes_predictions(tiny: Path, tmp_path: Path, batch_size: int) -> None:
    questions = ["Zoe has 3 cards.", "Liam buys 40 marbles at the market and gives 7 to Ava. How many now?",
                 "Each box holds 6 eggs.", "Sam earned $12."]
    golds = [_greedy_reply(tiny, q, 10).strip() for q in questions]
    golds[2] = "certainly not this"
    examples = [{"question": q, "answer": g} for q, g in zip(questions, golds)]
    events: list = []
    evaluator = AccuracyEvaluator({"batch_size": batch_size, "max_new_tokens": 10})
    result = evaluator.evaluate(str(tiny), examples, ExactTask(), tmp_path / "p.jsonl",
                                lambda k, p: events.append((k, p)), progress=False)
    assert (result["n"], result["correct"], result["accuracy"]) == (4, 3, 0.75)
    assert [k for k, _ in events] == ["eval_started", "eval_finished"] and events[1][1] == result
    json.dumps(result)
    lines = [json.loads(line) for line in Path(result["predictions_path"]).read_text().splitlines()]
    assert [line["question"] for line in lines] == questions  # input order, whatever the batching
    assert [line["correct"] for line in lines] == [True, True, False, True]
    assert set(lines[0]) >= {"question", "gold", "prediction", "extracted", "correct"}
    assert all(line["output_tokens"] <= 10 for line in lines)
    assert result["examples_per_s"] > 0


def test_a_trained_adapter_is_evaluated_on_its_base(tiny: Path, tmp_path: Path) -> None:
    """Train the tiny model to always answer 42, then evaluate the adapter folder: the evaluator
    must load the base named in adapter_config.json and apply the adapter."""
    from synthledger.plugins.trainers import LoraSFTTrainer

    names = ["Mia", "Sam", "Ava", "Raj", "Omar", "Lena", "Ben", "Zoe"]
    items = ["apples", "books", "coins", "cards", "eggs", "shells"]
    train_rows = [
        {"messages": [{"role": "user", "content": f"{n} has {i + 2} {it}. How many {it} in all?"},
                      {"role": "assistant", "content": "#### 42"}]}
        for i, (n, it) in enumerate((n, it) for n in names for it in items)
    ]
    trained = LoraSFTTrainer({"student": str(tiny), "epochs": 6, "learning_rate": 1e-2, "batch_size": 8,
                              "warmup_ratio": 0.0, "lora_r": 8}).train(train_rows, tmp_path / "t", progress=False)
    heldout = [{"question": f"{n} finds {k} pencils at school. How many pencils?", "answer": "42"}
               for k, n in enumerate(["Ali", "Noah", "Emma", "Liam"], start=5)]
    evaluator = AccuracyEvaluator({"batch_size": 4, "max_new_tokens": 8})
    base = evaluator.evaluate(str(tiny), heldout, GSM8KTask(), tmp_path / "base.jsonl", progress=False)
    tuned = evaluator.evaluate(trained["artifacts"]["adapter"], heldout, GSM8KTask(), tmp_path / "tuned.jsonl",
                               progress=False)
    assert base["accuracy"] == 0.0
    assert tuned["accuracy"] == 1.0
    assert tuned["adapter"] == trained["artifacts"]["adapter"] and tuned["base"] == str(tiny)


def test_run_loads_the_configured_heldout_and_checks_overlap(tiny: Path, tmp_path: Path) -> None:
    heldout = tmp_path / "h.jsonl"
    heldout.write_text(json.dumps({"question": "Zoe has 3 cards.", "answer": "3"}) + "\n")
    evaluator = AccuracyEvaluator({"heldout": str(heldout), "max_new_tokens": 4})
    with pytest.raises(HeldoutError, match="1 of 1 questions"):
        evaluator.run(str(tiny), GSM8KTask(), tmp_path / "p.jsonl", exclude_questions={"Zoe has 3 cards."})
    result = evaluator.run(str(tiny), GSM8KTask(), tmp_path / "p.jsonl")  # with the progress bar
    assert result["n"] == 1


def test_registered_under_plugin_host() -> None:
    from synthledger.engine.host import PluginHost

    host = PluginHost()
    import synthledger.plugins.evaluators as evaluators
    import synthledger.plugins.trainers as trainers

    host.add(evaluators, "evaluators")
    host.add(trainers, "trainers")
    assert host.get("evaluators", "accuracy") is AccuracyEvaluator
    assert host.get("trainers", "lora_sft").Options().student == "smollm2"


def test_prompt_is_the_bare_question_unless_the_instruction_is_asked_for() -> None:
    from synthledger.plugins.evaluators.accuracy import build_messages
    from synthledger.plugins.evaluators.options import AccuracyOptions

    task = GSM8KTask()
    assert build_messages("2+2?", task, AccuracyOptions()) == [{"role": "user", "content": "2+2?"}]
    with_instruction = build_messages("2+2?", task, AccuracyOptions(include_instruction=True, system_prompt="S"))
    assert with_instruction == [{"role": "system", "content": "S"},
                                {"role": "user", "content": f"2+2?\n\n{task.instruction}"}]
