"""Exports a fine-tuning stack takes as they are: OpenAI's strict upload format, an `hf` folder with
TRL's `messages` column and a dataset card, files with the user's umask, a push to the Hugging
Face Hub (through the real hub client, pointed at a local stub), and hub seeds that say "offline"."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from synthledger.engine.output.export import write_rows
from synthledger.testing.hub_stub import run_hub_stub
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def rows(n: int = 3) -> list[dict]:
    return [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}",
             "strategy": "answer_augmentation", "seed_id": f"s{i}", "role": "teacher", "model": "m",
             "query_ids": [f"q{i}"], "verification": {"accepted": True, "reason": "ok", "details": {}},
             "sample_id": f"sample-{i}", "run_id": "run-1"} for i in range(n)]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    full.pop("SYNTHLEDGER_STORE", None)
    full.update(env or {})
    r = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=180)
    r.stderr = " ".join(r.stderr.split())
    return r


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real run of 3 samples against the test server: (project dir, store url, run id)."""
    project = tmp_path_factory.mktemp("hfexport")
    with run_in_thread() as srv:
        write_project(project, srv.url, name="hf-run", seeds=3, queries=3)
        url = f"sqlite:///{project / 's.db'}"
        r = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, cwd=project)
        assert r.returncode == 0, r.stderr
    return project, url, re.search(r"run ([0-9a-f]{12}) ", r.stdout).group(1)


# ---- 9: --format openai ------------------------------------------------------------------------------------


def test_openai_format_is_exactly_messages(tmp_path):
    out = tmp_path / "ft.jsonl"
    assert write_rows(rows(), "openai", out) == 3
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(r) == {"messages"} for r in records)
    assert records[1]["messages"] == [{"role": "user", "content": "What is 1 + 1?"},
                                      {"role": "assistant", "content": "1 + 1 = 2\n#### 2"}]
    write_rows(rows(), "openai", out, system="Solve step by step.")
    first = json.loads(out.read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert all(set(m) == {"role", "content"} for m in first["messages"])


def test_openai_format_from_the_command_line(recorded, tmp_path):
    project, url, run_id = recorded
    r = cli("export", run_id, "--format", "openai", "--out", str(tmp_path / "o.jsonl"), "--store", url, cwd=project)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(list(rec) == ["messages"] for rec in records)
    bad = cli("export", run_id, "--format", "csv", "--out", str(tmp_path / "x"), "--store", url, cwd=project)
    assert bad.returncode == 2 and "--format must be one of jsonl, chat, openai, hf" in bad.stderr


# ---- 8: hf carries messages and a dataset card -------------------------------------------------------------


def test_hf_export_has_messages_beside_provenance_and_a_card(recorded, tmp_path):
    datasets = pytest.importorskip("datasets")
    project, url, run_id = recorded
    out = tmp_path / "hf"
    r = cli("export", "hf-run", "--format", "hf", "--out", str(out), "--license", "cc-by-4.0", "--store", url,
            cwd=project)
    assert r.returncode == 0, r.stderr
    assert "Saving the dataset" not in r.stderr and "it/s" not in r.stderr  # one line, not a bar per shard
    ds = datasets.load_from_disk(str(out))
    assert {"messages", "question", "answer", "sample_id", "query_ids", "verification"} <= set(ds.column_names)
    assert ds[0]["messages"] == [{"role": "user", "content": ds[0]["question"]},
                                 {"role": "assistant", "content": ds[0]["answer"]}]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0\n")
    for needle in (f"`{run_id}`", "## Provenance", "## Strategy", "`answer_augmentation`", "## Teacher",
                   "test-teacher", "## Budget", "| limit | 3 |", "## Licence"):
        assert needle in card, needle
    assert "127.0.0.1" not in card  # endpoints stay out of a card meant for publishing


def test_the_card_gives_the_seed_set_size_of_a_file_source(recorded, tmp_path):
    # A jsonl source without `size` takes every row: the card read "|S| = -" although the run recorded them.
    project, url, _ = recorded
    out = tmp_path / "hf"
    assert cli("export", "hf-run", "--format", "hf", "--out", str(out), "--store", url, cwd=project).returncode == 0
    assert "seeds from `jsonl` (|S| = 3)" in (out / "README.md").read_text()


def test_the_card_tells_seed_rows_from_the_teachers(recorded, tmp_path):
    # With --include-seeds it said every row was "written by a teacher model ... and accepted by the
    # verifier", seed rows too (QA).
    datasets = pytest.importorskip("datasets")
    project, url, _ = recorded
    out = tmp_path / "hf"
    r = cli("export", "hf-run", "--format", "hf", "--out", str(out), "--include-seeds", "--store", url, cwd=project)
    assert r.returncode == 0, r.stderr
    ds = datasets.load_from_disk(str(out))
    seeds = sum(s == "seed" for s in ds["strategy"])
    assert seeds > 0
    card = (out / "README.md").read_text()
    assert f": {len(ds) - seeds} question/answer rows, written by a teacher model" in card, card
    assert f"and {seeds} rows of the seed questions with their own answers" in card, card


def test_hf_export_trains_in_trl_sft_trainer_as_is(tmp_path):
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from trl import SFTConfig, SFTTrainer

    from synthledger.testing.tiny_model import build_tiny_llama

    write_rows(rows(4), "hf", tmp_path / "hf")
    model = build_tiny_llama(tmp_path / "tiny")
    trainer = SFTTrainer(model=str(model), train_dataset=datasets.load_from_disk(str(tmp_path / "hf")),
                         args=SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                                        report_to=[], use_cpu=True, save_strategy="no"))
    assert "input_ids" in trainer.train_dataset.column_names  # the messages column was read, no mapping
    assert trainer.train().global_step == 1


# ---- 10: the umask -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "chat", "openai", "hf"])
def test_exports_respect_the_umask(tmp_path, fmt):
    if fmt == "hf":
        pytest.importorskip("datasets")
    old = os.umask(0o022)
    try:
        out = tmp_path / ("hf" if fmt == "hf" else f"x.{fmt}.jsonl")
        write_rows(rows(), fmt, out, card="---\nlicense: unknown\n---\n" if fmt == "hf" else None)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(out.stat().st_mode)
    if fmt == "hf":
        assert mode == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o644}
    else:
        assert mode == 0o644


# ---- 8: push to the hub, and the offline cases ------------------------------------------------------------------


def test_push_to_hub_through_the_real_client(recorded, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("huggingface_hub")
    project, url, run_id = recorded
    with run_hub_stub() as hub:
        r = cli("export", run_id, "--format", "hf", "--out", str(tmp_path / "hf"), "--push-to-hub", "me/gsm-aa",
                "--store", url, cwd=project, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_x1"})
        assert r.returncode == 0, r.stderr
        assert "pushed 3 rows to" in r.stdout and "me/gsm-aa" in r.stdout
        files = hub.repos["me/gsm-aa"]["files"]
        assert set(files) == {"README.md", "data/train-00000-of-00001.parquet"}
        assert hub.tokens and set(hub.tokens) == {"hf_x1"}
    card = files["README.md"].decode()
    assert "path: data/train-*" in card and f"`{run_id}`" in card
    (tmp_path / "train.parquet").write_bytes(files["data/train-00000-of-00001.parquet"])
    pushed = datasets.Dataset.from_parquet(str(tmp_path / "train.parquet"))
    assert len(pushed) == 3 and pushed[0]["messages"][0]["role"] == "user"
    assert "hf_x1" not in Path(project / "s.db").read_bytes().decode("latin-1")  # no secret in the store


def test_push_when_offline_is_one_line_and_writes_nothing(recorded, tmp_path):
    project, url, run_id = recorded
    r = cli("export", run_id, "--format", "hf", "--out", str(tmp_path / "hf"), "--push-to-hub", "me/x",
            "--store", url, cwd=project)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "offline: cannot push to the Hugging Face Hub repo 'me/x'" in r.stderr
    assert not (tmp_path / "hf").exists()


def test_hub_seed_dataset_offline_says_so(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    from synthledger.engine.strategy import SeedError
    from synthledger.plugins.seeds.hf import HFSeedSource

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = HFSeedSource(HFSeedSource.Options(path="nobody-xyz/no-such-dataset-abc", config="main"),
                          base_dir=str(tmp_path))
    with pytest.raises(SeedError, match=r"^offline: cannot fetch hub dataset 'nobody-xyz/no-such-dataset-abc'"):
        source.load()
    local = HFSeedSource(HFSeedSource.Options(path="missing.jsonl"), base_dir=str(tmp_path))
    with pytest.raises(SeedError, match="seed dataset not found"):  # a file name is never taken for a hub id
        local.load()


# ---- the hf format replaces its folder whole: never one that is not an earlier export ----------------------


def test_hf_export_replaces_an_earlier_export_but_never_other_files(recorded, tmp_path):
    datasets = pytest.importorskip("datasets")
    project, url, _ = recorded
    out = tmp_path / "hf"
    for _ in range(2):  # the second replaces the first export
        r = cli("export", "hf-run", "--format", "hf", "--out", str(out), "--store", url, cwd=project)
        assert r.returncode == 0, r.stderr
    assert len(datasets.load_from_disk(str(out))) == 3
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = cli("export", "hf-run", "--format", "hf", "--out", str(mine), "--store", url, cwd=project)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "holds other files, not an earlier dataset export" in r.stderr and str(mine) in r.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_rows(rows(1), "hf", empty) == 1
