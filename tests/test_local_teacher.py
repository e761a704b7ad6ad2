"""The local transformers teacher: micro-batching, exact usage, EOS/stop handling, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import anyio
import pytest

from synthledger.engine.api import ChatRequest, FailureKind, Teacher, TeacherError
from synthledger.plugins.teachers.local import LocalTeacher, create, settings_from
from synthledger.testing.tiny_model import build_tiny_llama


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.getbasetemp() / "tiny-llama")


def ask(content: str, max_tokens: int = 8, temperature: float = 0.0, **kw) -> ChatRequest:
    return ChatRequest(model="local", messages=({"role": "user", "content": content},),
                       max_tokens=max_tokens, temperature=temperature, **kw)


async def gather(teacher: LocalTeacher, requests: list[ChatRequest]) -> list:
    results: list = [None] * len(requests)

    async def one(i: int) -> None:
        try:
            results[i] = await teacher.complete(requests[i])
        except TeacherError as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    return results


def reference_greedy(folder: Path, content: str, max_new_tokens: int) -> list[int]:
    """Greedy continuation straight from transformers, unbatched: what the teacher must match."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_is_a_teacher_and_factory_reads_engine_section(tiny: Path) -> None:
    from synthledger.engine.run.config import ModelSection

    section = ModelSection(provider="local", model=str(tiny), max_tokens=32, temperature=0.0,
                           batch_size=4, batch_wait_ms=5, device="cpu")
    teacher = create(section)
    assert isinstance(teacher, Teacher) and teacher.provider == "local"
    assert (teacher.settings.batch_size, teacher.settings.batch_wait_ms, teacher.settings.device) == (4, 5, "cpu")
    assert settings_from(None).model == "smollm2" and settings_from(None).batch_size == 16


async def test_concurrent_calls_share_one_generate(tiny: Path) -> None:
    teacher = LocalTeacher({"model": str(tiny), "batch_size": 16, "batch_wait_ms": 200})
    results = await gather(teacher, [ask(f"Question {i}: Mia has {i} apples.") for i in range(8)])
    assert all(not isinstance(r, Exception) for r in results)
    assert teacher.stats.batches == 1 and teacher.stats.batch_sizes == [8]


async def test_batches_never_exceed_batch_size(tiny: Path) -> None:
    teacher = LocalTeacher({"model": str(tiny), "batch_size": 4, "batch_wait_ms": 200})
    results = await gather(teacher, [ask(f"q{i}") for i in range(10)])
    assert all(len(r.texts) == 1 for r in results)
    assert sorted(teacher.stats.batch_sizes) == [2, 4, 4]


async def test_different_sampling_settings_are_not_mixed(tiny: Path) -> None:
    teacher = LocalTeacher({"model": str(tiny), "batch_size": 16, "batch_wait_ms": 200})
    requests = [ask("a"), ask("b", temperature=0.9), ask("c"), ask("d", temperature=0.9)]
    await gather(teacher, requests)
    assert sorted(teacher.stats.batch_sizes) == [2, 2]


async def test_usage_is_exact_and_rows_are_cut_at_their_own_max_tokens(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    teacher = LocalTeacher({"model": str(tiny), "batch_wait_ms": 200})
    short, long_ = "Zoe has 3 cards.", "Liam buys 40 marbles at the market and gives 7 to Ava. How many now?"
    requests = [ask(short, max_tokens=5), ask(long_, max_tokens=12), ask(short, max_tokens=12)]
    results = await gather(teacher, requests)
    assert teacher.stats.batches == 1
    for request, completion in zip(requests, results):
        prompt = tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)
        exact = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert completion.usage.input_tokens == exact == teacher.prompt_tokens_upper_bound(request)
    # The tiny model does not end early here, so each row is exactly its own max_tokens long...
    assert [r.usage.output_tokens for r in results] == [5, 12, 12]
    assert [r.finish_reasons for r in results] == [["length"]] * 3
    # ...and batching with left padding changes nothing: same tokens as an unbatched greedy run.
    for request, completion in zip(requests, results):
        expected = reference_greedy(tiny, request.messages[0]["content"], request.max_tokens)
        assert completion.texts[0] == tokenizer.decode(expected, skip_special_tokens=True)


async def test_eos_ends_a_row_and_nothing_after_it_is_counted(tiny: Path, tmp_path: Path) -> None:
    question = "Sam has 12 coins and finds 30 more."
    greedy = reference_greedy(tiny, question, 12)
    k = next(i for i in range(2, len(greedy)) if greedy[i] not in greedy[:i])
    # A copy of the model whose generation config also treats greedy[k] as end-of-sequence.
    folder = tmp_path / "eos-model"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], greedy[k]]
    (folder / "generation_config.json").write_text(json.dumps(config))

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    teacher = LocalTeacher({"model": str(folder), "batch_wait_ms": 200})
    other = "Emma reads 5 books every week for 9 weeks. How many books?"
    other_greedy = reference_greedy(tiny, other, 12)
    results = await gather(teacher, [ask(question, max_tokens=12), ask(other, max_tokens=12)])
    assert teacher.stats.batches == 1
    assert results[0].finish_reasons == ["stop"]
    assert results[0].usage.output_tokens == k + 1  # the EOS token counts, the padding after it does not
    assert results[0].texts[0] == tokenizer.decode(greedy[:k], skip_special_tokens=True)
    stop_at = next((i for i, t in enumerate(other_greedy) if t == greedy[k]), None)
    assert results[1].usage.output_tokens == (stop_at + 1 if stop_at is not None else 12)


async def test_stop_strings_cut_the_text(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    question = "Omar earned $40 on Monday."
    full = tokenizer.decode(reference_greedy(tiny, question, 16), skip_special_tokens=True)
    stop = full.strip()[len(full.strip()) // 2:][:2]
    assert stop and stop in full
    teacher = LocalTeacher({"model": str(tiny), "batch_wait_ms": 0})
    completion = await teacher.complete(ask(question, max_tokens=16, stop=(stop,)))
    assert completion.texts[0] == full[: full.index(stop)]
    assert completion.finish_reasons == ["stop"]
    assert 0 < completion.usage.output_tokens < 16


async def test_n_samples_fill_the_batch_as_rows(tiny: Path) -> None:
    import torch

    # Sampled at temperature 1.0, the random model can draw its EOS token early (it did in CI:
    # [18, 14]); a fixed seed keeps every row its full six tokens.
    torch.manual_seed(0)
    teacher = LocalTeacher({"model": str(tiny), "batch_size": 4, "batch_wait_ms": 200})
    results = await gather(teacher, [ask("x", max_tokens=6, temperature=1.0, n=3),
                                     ask("y", max_tokens=6, temperature=1.0, n=3)])
    assert [len(r.texts) for r in results] == [3, 3]
    assert [r.usage.output_tokens for r in results] == [18, 18]
    assert teacher.stats.batches == 2 and teacher.stats.rows == 6  # 3 + 3 rows do not fit in 4


async def test_cancelled_leader_does_not_strand_the_others(tiny: Path) -> None:
    teacher = LocalTeacher({"model": str(tiny), "batch_size": 16, "batch_wait_ms": 300})
    done: list = []

    async def first() -> None:
        with anyio.move_on_after(0.05):  # cancelled while it leads the batch window
            await teacher.complete(ask("first"))
            done.append("first")

    async def later(tag: str) -> None:
        await anyio.sleep(0.01)
        done.append((await teacher.complete(ask(tag))).texts[0] is not None and tag)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(later, "second")
            tg.start_soon(later, "third")
    assert sorted(done) == ["second", "third"]
    assert teacher.stats.batch_sizes == [2]


async def test_too_long_prompt_is_a_bad_request(tiny: Path) -> None:
    teacher = LocalTeacher({"model": str(tiny), "batch_wait_ms": 0})
    with pytest.raises(TeacherError) as info:
        await teacher.complete(ask("word " * 1500, max_tokens=1000))
    assert info.value.kind is FailureKind.BAD_REQUEST and "context" in info.value.message


async def test_failure_inside_generate_is_a_server_error(tiny: Path, tmp_path: Path) -> None:
    """A model whose embedding is smaller than its tokenizer fails inside generate, for real."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    config = LlamaConfig.from_pretrained(tiny)
    config.vocab_size = 8
    folder = tmp_path / "broken"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.save_pretrained(folder)
    teacher = LocalTeacher({"model": str(folder), "batch_wait_ms": 0})
    with pytest.raises(TeacherError) as info:
        await teacher.complete(ask("Mia has apples"))
    assert info.value.kind is FailureKind.SERVER_ERROR and info.value.maybe_billed is False


def test_unknown_model_is_a_configuration_error_before_any_query(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a failed query per item: the teacher cannot be built, naming the model and why."""
    from synthledger.plugins.hf_models import UnknownModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModel) as info:
        LocalTeacher({"model": "no-such-model-anywhere", "batch_wait_ms": 0})
    message = str(info.value)
    assert "has no model 'no-such-model-anywhere'" in message and "HF_HUB_OFFLINE" in message


def test_generate_with_an_unknown_local_model_stops_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "seeds.jsonl").write_text('{"question": "What is 2+2?", "answer": "#### 4"}\n')
    (tmp_path / "run.toml").write_text('[run]\nname = "lt"\n[seeds]\nsource = "jsonl"\npath = "seeds.jsonl"\n'
                                       '[teacher]\nprovider = "local"\nmodel = "no-such-model"\n'
                                       '[budget]\nqueries = 2\n[strategy]\nname = "answer_augmentation"\n')
    cli = Path(__file__).resolve().parents[1] / "cli.py"
    store = tmp_path / "store.db"
    res = subprocess.run([sys.executable, str(cli), "generate", "-c", "run.toml", "--no-progress", "--store",
                          f"sqlite:///{store}"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: [teacher] the local provider has no model 'no-such-model'")
    assert not store.exists()


@pytest.mark.slow
async def test_real_smollm2_answers_and_counts_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from synthledger.plugins.hf_models import smollm2_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = LocalTeacher({"model": "smollm2", "batch_wait_ms": 200, "device": "cpu"})
    requests = [ask("What is 2 + 3? Reply with just the number.", max_tokens=24),
                ask("What is the capital of France? Reply in one word.", max_tokens=24)]
    results = await gather(teacher, requests)
    assert teacher.stats.batch_sizes == [2]
    assert "5" in results[0].texts[0] and "paris" in results[1].texts[0].lower()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    for completion in results:
        assert completion.finish_reasons == ["stop"]
        # The reply's own tokens plus the <|im_end|> that ended it; padding after it is not counted.
        assert completion.usage.output_tokens == len(tokenizer(completion.texts[0], add_special_tokens=False)["input_ids"]) + 1
    await teacher.aclose()


def test_unknown_local_teacher_keys_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    from synthledger.engine.run.assemble import build_endpoints
    from synthledger.engine.run.config import ConfigError, RunConfig

    cfg = RunConfig.model_validate({
        "run": {"name": "typo"}, "seeds": {"source": "reasoning-gym", "size": 2},
        "teacher": {"provider": "local", "model": "smollm2", "batch_sise": 4, "timeout_s": 30},
        "budget": {"queries": 2}, "strategy": {"name": "answer_augmentation"},
    })
    with pytest.raises(ConfigError, match=r"teacher\.batch_sise"):
        build_endpoints(cfg, ("teacher",))
