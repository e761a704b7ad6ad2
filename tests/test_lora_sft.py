"""The LoRA SFT trainer: assistant-only labels, overlength accounting, errors, artifacts, events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synthledger.plugins.hf_models import UnknownModel
from synthledger.plugins.trainers import LoraSFTOptions, LoraSFTTrainer, TrainingError
from synthledger.plugins.trainers.chat_data import IGNORE_INDEX, encode_messages, encode_rows
from synthledger.plugins.trainers.sampler import GroupedBatchOrder
from synthledger.testing.tiny_model import build_tiny_llama


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.getbasetemp() / "tiny-llama")


@pytest.fixture(scope="session")
def tokenizer(tiny: Path):
    from synthledger.plugins.hf_models import load_tokenizer

    return load_tokenizer(str(tiny), padding_side="right")


def chat(question: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def rows(n: int = 24) -> list[dict]:
    return [chat(f"Mia has {i} apples and buys {i + 3} more. How many?", f"{i} + {i + 3} = {2 * i + 3}.\n#### {2 * i + 3}")
            for i in range(n)]


def options(tiny: Path, **kw) -> LoraSFTOptions:
    base = dict(student=str(tiny), epochs=2, learning_rate=2e-3, batch_size=4, logging_steps=2, warmup_ratio=0.0)
    return LoraSFTOptions(**{**base, **kw})


def test_labels_cover_exactly_the_assistant_turns(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Ali has 3 cards."},
        {"role": "assistant", "content": "So 3."},
        {"role": "user", "content": "And twice that?"},
        {"role": "assistant", "content": "3 * 2 = 6.\n#### 6"},
    ]
    row = encode_messages(tokenizer, messages)
    assert len(row.labels) == len(row.input_ids)
    trained = [t for t, label in zip(row.input_ids, row.labels) if label != IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(row.input_ids, row.labels))
    # Exactly the two replies, each with the end-of-turn token the model must learn to emit.
    assert tokenizer.decode(trained) == "So 3.<|im_end|>3 * 2 = 6.\n#### 6<|im_end|>"
    untrained = tokenizer.decode([t for t, label in zip(row.input_ids, row.labels) if label == IGNORE_INDEX])
    assert "Be brief." in untrained and "Ali has 3 cards." in untrained and "<|im_start|>assistant" in untrained
    assert "So 3" not in untrained


def test_overlength_rows_are_truncated_or_dropped_and_counted(tokenizer) -> None:
    data = [chat("short?", "yes"), chat("long?", "many words " * 200), chat("prompt " * 300, "unreachable")]
    cut = encode_rows(tokenizer, data, max_length=64, overlength="truncate")
    assert (cut.total, len(cut.rows), cut.truncated, cut.dropped) == (3, 2, 1, 1)
    assert cut.dropped_reasons == {"no assistant tokens within max_length": 1}
    assert max(len(r.input_ids) for r in cut.rows) == 64
    dropped = encode_rows(tokenizer, data, max_length=64, overlength="drop")
    assert (len(dropped.rows), dropped.truncated, dropped.dropped) == (1, 0, 2)


def test_bad_rows_name_the_row_and_key(tokenizer) -> None:
    with pytest.raises(TrainingError, match=r"training row 1: messages\[0\]\.role must be one of"):
        encode_rows(tokenizer, [chat("a", "b"), {"messages": [{"role": "robot", "content": "x"}]}], 64, "truncate")
    with pytest.raises(TrainingError, match="training row 0: no assistant message"):
        encode_rows(tokenizer, [{"messages": [{"role": "user", "content": "x"}]}], 64, "truncate")
    with pytest.raises(TrainingError, match=r"training row 0: messages\[1\]\.content must be a string"):
        encode_rows(tokenizer, [{"messages": [{"role": "user", "content": "x"},
                                              {"role": "assistant", "content": None}]}], 64, "truncate")


def test_empty_dataset_fails_clearly_and_reports_it(tiny: Path, tmp_path: Path) -> None:
    events: list = []
    with pytest.raises(TrainingError, match="dataset is empty"):
        LoraSFTTrainer(options(tiny)).train([], tmp_path, lambda k, p: events.append((k, p)), progress=False)
    assert [k for k, _ in events] == ["training_failed"] and "empty" in events[0][1]["reason"]


def test_all_rows_dropped_is_an_error_naming_the_cause(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="all 1 training rows were dropped.*longer than max_length"):
        LoraSFTTrainer(options(tiny, max_length=16, overlength="drop")).train(
            [chat("x " * 50, "y")], tmp_path, progress=False)


def test_unknown_student_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    events: list = []
    with pytest.raises(UnknownModel, match="not-a-model"):
        LoraSFTTrainer({"student": "not-a-model"}).train(rows(2), tmp_path, lambda k, p: events.append(k))
    assert events == ["training_failed"]


def test_training_writes_artifacts_reports_events_and_learns(tiny: Path, tmp_path: Path) -> None:
    events: list = []
    data = rows(24)
    result = LoraSFTTrainer(options(tiny, learning_rate=1e-2)).train(data, tmp_path / "run", lambda k, p: events.append((k, p)),
                                                 progress=True)
    kinds = [k for k, _ in events]
    assert kinds[0] == "training_started" and kinds[-1] == "training_finished"
    assert kinds.count("training_progress") == 6  # 24 rows / 4 per step * 2 epochs = 12 steps, logged every 2
    started = events[0][1]
    assert (started["rows"], started["dropped"], started["truncated"]) == (24, 0, 0)
    assert started["hyperparameters"]["lora_r"] == 16 and len(started["dataset_hash"]) == 64
    json.dumps([p for _, p in events])  # every payload is JSON, as the event store needs

    assert result == events[-1][1] and result["steps"] == 12
    curve = [p["loss"] for k, p in events if k == "training_progress"]
    assert curve[-1] < curve[0] * 0.8  # it learns the pattern
    # Token throughput counts real tokens: exactly the dataset's tokens once per epoch.
    assert result["tokens"] == 2 * started["tokens"] and result["tokens_per_s"] > 0
    artifacts = result["artifacts"]
    adapter = Path(artifacts["adapter"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer_config.json").is_file()
    assert json.loads(Path(artifacts["loss_curve"]).read_text())[-1]["loss"] == result["final_loss"]
    assert Path(artifacts["loss_plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads(Path(artifacts["training_config"]).read_text())
    assert config["student"] == str(tiny) and config["options"]["epochs"] == 2
    assert "merged" not in artifacts
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny)


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_same_seed_same_adapter_and_max_steps(tiny: Path, tmp_path: Path) -> None:
    import torch

    opts = options(tiny, max_steps=3, logging_steps=1)
    a = LoraSFTTrainer(opts).train(rows(16), tmp_path / "a", progress=False)
    b = LoraSFTTrainer(opts).train(rows(16), tmp_path / "b", progress=False)
    assert a["steps"] == b["steps"] == 3
    ta, tb = _adapter_tensors(tmp_path / "a"), _adapter_tensors(tmp_path / "b")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    c = LoraSFTTrainer(options(tiny, max_steps=3, logging_steps=1, seed=1)).train(rows(16), tmp_path / "c",
                                                                                  progress=False)
    tc = _adapter_tensors(tmp_path / "c")
    assert c["steps"] == 3 and not all(torch.equal(ta[k], tc[k]) for k in ta)


def test_labelled_positions_loss_equals_the_models_own_loss(tiny: Path, tmp_path: Path) -> None:
    """The fast path changes the cost, not the optimisation: same losses, same adapter."""
    import torch

    opts = dict(max_steps=3, logging_steps=1, grad_accum=2, batch_size=3)
    data = rows(12) + [chat("A much longer question about " + "apples and pears " * 9, "short")]
    fast = LoraSFTTrainer(options(tiny, **opts)).train(data, tmp_path / "fast", progress=False)
    plain = LoraSFTTrainer(options(tiny, fast_loss=False, **opts)).train(data, tmp_path / "plain", progress=False)
    assert fast["fast_loss"] is True and plain["fast_loss"] is False
    curves = [json.loads(Path(r["artifacts"]["loss_curve"]).read_text()) for r in (fast, plain)]
    assert [p["loss"] for p in curves[0]] == pytest.approx([p["loss"] for p in curves[1]], rel=1e-5)
    ta, tb = _adapter_tensors(tmp_path / "fast"), _adapter_tensors(tmp_path / "plain")
    assert all(torch.allclose(ta[k], tb[k], atol=1e-6) for k in ta)


def test_merge_writes_a_plain_model_equal_to_base_plus_adapter(tiny: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = LoraSFTTrainer(options(tiny, max_steps=4, merge=True)).train(rows(8), tmp_path, progress=False)
    merged_dir = Path(result["artifacts"]["merged"])
    assert not (merged_dir / "adapter_config.json").exists() and (merged_dir / "tokenizer_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), result["artifacts"]["adapter"]).eval()
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)


def test_length_grouped_order_is_a_random_permutation_of_similar_batches() -> None:
    lengths = [(i * 37) % 101 + 5 for i in range(203)]
    sampler = GroupedBatchOrder(lengths, batch_size=8, seed=0)
    first = list(sampler)
    second = list(sampler)  # the next epoch
    assert sorted(first) == list(range(203)) and sorted(second) == list(range(203))
    assert first != second
    batches = [first[i:i + 8] for i in range(0, 200, 8)]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 15  # random batches of these lengths spread ~80 tokens
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest first: OOM shows at step 1
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_registration_imports_no_torch() -> None:
    code = ("import sys; import synthledger.plugins.trainers as t, synthledger.plugins.evaluators as e; "
            "from synthledger.plugins.evaluators.heldout import load_heldout; "
            "assert t.LoraSFTTrainer.Options().epochs == 3; "
            "assert not {'torch', 'transformers', 'peft'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_smollm2_labels_cover_the_assistant_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthledger.plugins.hf_models import load_tokenizer, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer(resolve_model("smollm2"))
    row = encode_messages(tok, chat("What is 2 + 3?", "2 + 3 = 5.\n#### 5")["messages"])
    trained = [t for t, label in zip(row.input_ids, row.labels) if label != IGNORE_INDEX]
    assert tok.decode(trained) == "2 + 3 = 5.\n#### 5<|im_end|>"
