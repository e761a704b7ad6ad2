"""`train` as a user runs it: bad input is one clear line and exit 2, recorded as a failed `train`
run; `--merge` writes a plain model folder next to the adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def cli(*args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(extra_env or {})}
    env.pop("SYNTHLEDGER_STORE", None)
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from synthledger.testing.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    with path.open("w") as fh:
        for i in range(6):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                              {"role": "assistant", "content": f"{i} plus {i} is {2 * i}. #### {2 * i}"}]}) + "\n")
    return path


def test_all_rows_too_long_is_a_clear_error_and_a_failed_train_run(tmp_path: Path, tiny: Path, data: Path) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("train", str(data), "--store", store, "--no-progress", "--set", f"trainer.student={tiny}",
            "--set", "trainer.max_length=8", "--set", "trainer.overlength=drop", cwd=tmp_path)
    assert r.returncode == 2
    message = " ".join(r.stderr.split())
    assert "all 6 training rows were dropped (6 longer than max_length)" in message and "Traceback" not in message
    runs = json.loads(cli("runs", "--json", "--store", store, cwd=tmp_path).stdout)
    assert [(x["kind"], x["status"]) for x in runs] == [("train", "failed")]


def test_unknown_student_names_it(tmp_path: Path, data: Path) -> None:
    r = cli("train", str(data), "--store", f"sqlite:///{tmp_path / 's.db'}", "--no-progress",
            "--set", f"trainer.student={tmp_path / 'nope'}", cwd=tmp_path)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_merge_flag_writes_a_merged_model(tmp_path: Path, tiny: Path, data: Path) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("train", str(data), "--store", store, "--no-progress", "--merge", "--set", f"trainer.student={tiny}",
            "--set", "trainer.max_steps=1", "--set", "trainer.batch_size=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].endswith("completed")
    out_dir = tmp_path / Path(r.stdout.split("adapter in ")[1].split()[0].rstrip(";"))
    assert (out_dir / "adapter" / "adapter_config.json").is_file()
    assert (out_dir / "merged" / "config.json").is_file() and not (out_dir / "merged" / "adapter_config.json").exists()


def test_progress_bars_go_to_stderr_and_stdout_holds_only_the_result_lines(tmp_path: Path, tiny: Path,
                                                                           data: Path) -> None:
    """--progress is documented as "on stderr": a script that reads `train`'s or `eval`'s stdout
    (the adapter folder, the accuracy, the run id) must not find the bars' last frame there."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("train", str(data), "--store", store, "--set", f"trainer.student={tiny}",
            "--set", "trainer.max_steps=2", "--set", "trainer.batch_size=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["trained:", "run"], r.stdout
    assert "training" in r.stderr and "2/2" in r.stderr
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"question": "What is 9 plus 9?", "answer": "18"}) + "\n")
    student = r.stdout.split("adapter in ")[1].split()[0]
    r = cli("eval", student, "--on", str(held), "--store", store, "--max-new-tokens", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["accuracy", "run"], r.stdout
    assert "evaluating" in r.stderr and "1/1" in r.stderr


def test_a_file_row_with_neither_messages_nor_an_answer_names_its_file_and_line(tmp_path: Path, tiny: Path,
                                                                              data: Path) -> None:
    rows = tmp_path / "mixed.jsonl"
    rows.write_text(data.read_text() + "\n" + json.dumps({"question": "What is 1 plus 1?"}) + "\n")
    store = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("train", str(rows), "--store", store, "--no-progress", "--set", f"trainer.student={tiny}", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    message = " ".join(r.stderr.split())
    assert f"{rows}, line 8: has no 'messages' and no 'answer' string" in message, message
    assert json.loads(cli("runs", "--json", "--store", store, cwd=tmp_path).stdout) == []


def test_a_chat_row_of_the_wrong_shape_or_an_empty_file_is_named_before_any_run(tmp_path: Path, tiny: Path,
                                                                                  data: Path) -> None:
    """A chat row whose messages are wrong said 'training row 0: ...' (no file, no line) only after
    the student had loaded, leaving a failed run; an empty file got advice about runs in the store."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    bad = tmp_path / "chat.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]})
    bad.write_text(good + "\n" + json.dumps({"messages": [1]}) + "\n")
    r = cli("train", str(bad), "--store", store, "--no-progress", "--set", f"trainer.student={tiny}", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    message = " ".join(r.stderr.split())
    assert f"{bad}, line 2: messages[0] must be an object with 'role' and 'content'" in message, message
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = cli("train", str(empty), "--store", store, "--no-progress", "--set", f"trainer.student={tiny}", cwd=tmp_path)
    assert r.returncode == 2 and " ".join(r.stderr.split()) == f"error: dataset file {empty} has no rows to train on"
    assert json.loads(cli("runs", "--json", "--store", store, cwd=tmp_path).stdout) == []


def test_a_dataset_file_that_does_not_exist_is_named_not_the_store(tmp_path: Path) -> None:
    """Without a store in the folder, a mistyped file name was reported as a missing store."""
    r = cli("train", "rows.jsonl", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert " ".join(r.stderr.split()) == "error: dataset file rows.jsonl does not exist"


def test_outputs_under_a_file_are_refused_before_any_run_is_recorded(tmp_path: Path, tiny: Path, data: Path) -> None:
    """The student folder and the predictions file are written at the end of a long job: a path
    that cannot hold them is one line up front, not a traceback (eval) or a failed run after the
    model was loaded (train)."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("train", str(data), "--store", store, "--no-progress", "--set", f"trainer.student={tiny}",
            "--set", f"output.dir={data}/student", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert " ".join(r.stderr.split()) == f"error: [output] dir {data}/student: {data} is a file, not a folder"
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"question": "What is 9 plus 9?", "answer": "18"}) + "\n")
    r = cli("eval", str(tiny), "--on", str(held), "--store", store, "--no-progress", "--out", f"{data}/p.jsonl",
            cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert " ".join(r.stderr.split()) == f"error: predictions {data}/p.jsonl: {data} is a file, not a folder"
    assert json.loads(cli("runs", "--json", "--store", store, cwd=tmp_path).stdout) == []


def test_ctrl_c_mid_training_records_the_run_as_interrupted_and_says_so(tmp_path: Path, tiny: Path,
                                                                        data: Path) -> None:
    """Ctrl-C is the user stopping a run, not the run failing: `interrupted` (as a generation run
    stopped by a signal is), one line naming the run, exit 130; it was `failed`, 'KeyboardInterrupt: ',
    and nothing on the terminal."""
    import signal
    import time

    import synthledger
    from synthledger.store.errors import StoreMissing

    store = f"sqlite:///{tmp_path / 's.db'}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    # As from a terminal. Where the tests themselves were started in the background of a script,
    # SIGINT comes ignored, and a process started so keeps ignoring it (as Python, and nohup'd jobs, do).
    proc = subprocess.Popen([sys.executable, CLI, "train", str(data), "--store", store, "--no-progress",
                             "--set", f"trainer.student={tiny}", "--set", "trainer.epochs=100000"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the run has recorded training_started
            if (tmp_path / "s.db").exists():
                try:
                    with synthledger.open_store(store) as st:
                        if any(r.status == "running" and r.last_seq >= 2 for r in st.runs()):
                            break
                except StoreMissing:  # the file is there, its tables not yet: the store is being made
                    pass
            time.sleep(0.3)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # still going: say where it is stuck
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            stdout, stderr = proc.communicate()
            raise AssertionError(f"still running 60 s after Ctrl-C; its threads:\n{stderr[-6000:]}") from None
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    runs = json.loads(cli("runs", "--json", "--store", store, cwd=tmp_path).stdout)
    assert [(r["kind"], r["status"]) for r in runs] == [("train", "interrupted")]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (f"interrupted: train run {runs[0]['id']} is recorded as "
                                               "interrupted; train again to replace it")


def test_training_on_a_run_that_did_not_finish_warns_that_it_has_part_of_its_data(tmp_path: Path, tiny: Path) -> None:
    """A generation run killed half-way (still `running` in the store) trains silently on what it had;
    `export` of the same run warns, and so does `train` now, before the wait."""
    from synthledger.testing.projects import write_project
    from synthledger.testing.server import run_in_thread

    store = f"sqlite:///{tmp_path / 's.db'}"
    with run_in_thread() as srv:
        config = write_project(tmp_path, srv.url, name="half", seeds=4, queries=40)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SYNTHLEDGER_EXIT_AFTER_COMMITS": "6"}
        killed = subprocess.run([sys.executable, CLI, "generate", "--config", str(config), "--store", store,
                                 "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode != 0
    runs = json.loads(cli("runs", "--json", "--store", store, cwd=tmp_path).stdout)
    assert [(r["name"], r["status"]) for r in runs] == [("half", "running")]
    r = cli("train", "half", "--store", store, "--no-progress", "--set", f"trainer.student={tiny}",
            "--set", "trainer.max_steps=1", cwd=tmp_path)
    assert f"warning: run {runs[0]['id']} (half) is running: training on the rows it had accepted so far" \
        in " ".join(r.stderr.split()), r.stderr


def test_away_from_a_terminal_training_progress_is_a_line_every_few_seconds(tmp_path: Path, tiny: Path,
                                                                            data: Path) -> None:
    """With stderr in a log file (CI, `2> log`) rich draws its bar only when it stops, so a long
    training or evaluation printed nothing at all until the end; now a plain line every 5 s, as
    `generate` prints (the same StepProgress draws both commands' bars). Lines half a second apart:
    a fast machine trained the 250 steps in 2.3 s, inside the default 5 s, and printed only the last."""
    import re

    r = cli("train", str(data), "--store", f"sqlite:///{tmp_path / 's.db'}", "--set", f"trainer.student={tiny}",
            "--set", "trainer.max_steps=250", "--set", "trainer.batch_size=2", cwd=tmp_path,
            extra_env={"SYNTHLEDGER_PROGRESS_EVERY_S": "0.5"})
    assert r.returncode == 0, r.stderr
    steps = [int(m.group(1)) for m in re.finditer(r"^\[ *[\d.]+s\] training: (\d+)/250, loss [\d.]+$", r.stderr, re.M)]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[0] < 250 and steps[-1] == 250, r.stderr


def test_a_bad_eval_section_is_refused_before_training(tmp_path: Path, tiny: Path, data: Path) -> None:
    """`[eval]` runs after training: a held-out file that is not there, or an unknown task, failed
    only once the student was trained (hours, for a real one), leaving a run and a student behind."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    for section, message in (('heldout = "missing.jsonl"', "error: held-out file missing.jsonl does not exist"),
                             ('heldout = "held.jsonl"\ntask = "nosuch"', "error: no task named 'nosuch'")):
        config = tmp_path / "train.toml"
        config.write_text(f'[trainer]\nstudent = "{tiny}"\nmax_steps = 1\n[output]\ndir = "student"\n'
                          f'[eval]\n{section}\n')
        (tmp_path / "held.jsonl").write_text(json.dumps({"question": "What is 9 plus 9?", "answer": "18"}) + "\n")
        r = cli("train", str(data), "--config", str(config), "--store", store, "--no-progress", cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert " ".join(r.stderr.split()).startswith(message), r.stderr
        assert "trained:" not in r.stdout and not (tmp_path / "student").exists()
    assert not (tmp_path / "s.db").exists()
