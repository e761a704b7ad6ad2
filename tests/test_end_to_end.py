"""The whole loop through the CLI: generate -> export -> train a student -> evaluate -> audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthledger.testing.server import ServerConfig, run_in_thread

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "cli.py")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(CLI + list(args), capture_output=True, text=True, env=ENV, timeout=timeout)
    assert out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> Path:
    from synthledger.testing.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.mark.slow
def test_generate_export_train_eval_audit(tmp_path, tiny_student):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    with run_in_thread(ServerConfig(latency_ms=5)) as srv:
        (tmp_path / "run.toml").write_text(f"""
[run]
name = "e2e"
[seeds]
source = "reasoning-gym"
dataset = "gsm_symbolic"
size = 12
seed = 3
[teacher]
provider = "openai-compatible"
base_url = "{srv.url}/v1"
model = "test-teacher"
max_tokens = 64
[budget]
queries = 36
[strategy]
name = "answer_augmentation"
""")
        gen = cli("generate", "--config", str(tmp_path / "run.toml"), "--store", store, "--no-progress")
    run_id = gen.stdout.strip().splitlines()[-1].split()[1]
    assert "budget_exhausted" in gen.stdout
    cli("export", run_id, "--format", "chat", "--out", str(tmp_path / "data.jsonl"), "--store", store)
    assert len((tmp_path / "data.jsonl").read_text().splitlines()) == 36
    (tmp_path / "train.toml").write_text(f"""
[trainer]
name = "lora_sft"
student = "{tiny_student}"
epochs = 1
batch_size = 4
max_length = 256
learning_rate = 1e-3
[output]
dir = "{tmp_path / 'student'}"
""")
    trained = cli("train", run_id, "--config", str(tmp_path / "train.toml"), "--store", store, "--no-progress")
    assert (tmp_path / "student" / "adapter" / "adapter_config.json").exists()
    scored = cli("eval", str(tmp_path / "student"), "--on", "reasoning-gym:gsm_symbolic:777", "--limit", "6",
                 "--max-new-tokens", "16", "--out", str(tmp_path / "preds.jsonl"), "--store", store, "--no-progress")
    preds = [json.loads(x) for x in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and {"question", "gold", "prediction", "extracted", "correct"} <= set(preds[0])
    runs = json.loads(cli("runs", "--json", "--store", store).stdout)
    kinds = {r["kind"]: r for r in runs}
    assert set(kinds) == {"generate", "train", "eval"}
    assert kinds["train"]["parent_id"] == run_id and kinds["eval"]["parent_id"] == kinds["train"]["id"]
    for r in runs:  # every run, training and evaluation included, passes the audit
        report = json.loads(cli("audit", r["id"], "--json", "--store", store).stdout)
        assert report["ok"], report["violations"]
    train_events = [json.loads(x)["type"] for x in cli("events", kinds["train"]["id"], "--store", store).stdout.splitlines()]
    assert train_events[0] == "run_started" and "training_started" in train_events and "training_finished" in train_events
    assert "trained: final loss" in trained.stdout and "accuracy" in scored.stdout


@pytest.mark.slow
def test_new_question_with_the_real_local_smollm2_teacher(tmp_path):
    pytest.importorskip("torch")
    store = f"sqlite:///{tmp_path / 'store.db'}"
    (tmp_path / "run.toml").write_text("""
[run]
name = "local-newq"
[seeds]
source = "reasoning-gym"
dataset = "gsm_symbolic"
size = 4
seed = 5
[teacher]
provider = "local"
model = "smollm2"
max_tokens = 32
timeout_s = 900
batch_size = 8
[budget]
queries = 4
[strategy]
name = "new_question"
check_well_posed = false
""")
    gen = cli("generate", "--config", str(tmp_path / "run.toml"), "--store", store, "--no-progress", timeout=900)
    run_id = gen.stdout.strip().splitlines()[-1].split()[1]
    report = json.loads(cli("audit", run_id, "--json", "--store", store).stdout)
    assert report["ok"] and report["spent"]["queries"] == 4
    assert set(report["by_role"]) <= {"augmenter", "teacher"} and report["by_role"]["augmenter"]["queries"] >= 1
    assert report["spent"]["usd"] == 0 and report["spent"]["output_tokens"] > 0
