import json

import pytest

from synthledger.engine.output.export import ExportError, write_rows


def rows(n=3):
    return [
        {
            "question": f"What is {i} + {i}?",
            "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}",
            "strategy": "answer_augmentation" if i % 2 else "new_question",
            "seed_id": f"s{i}" if i % 2 else None,
            "role": "teacher",
            "model": "test-model",
            "query_ids": [f"q{i}", f"q{i}b"],
            "verification": {"accepted": True, "reason": "ok", "details": {"votes": {str(2 * i): 3}}} if i else
                            {"accepted": True, "reason": "not verified", "details": {}},
            "sample_id": f"sample-{i}",
            "run_id": "run-1",
        }
        for i in range(n)
    ]


def test_jsonl_writes_one_row_per_line(tmp_path):
    out = tmp_path / "out" / "data.jsonl"
    assert write_rows(iter(rows()), "jsonl", out) == 3
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == rows()


def test_chat_format_has_messages_and_provenance(tmp_path):
    out = tmp_path / "chat.jsonl"
    assert write_rows(rows(), "chat", out) == 3
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    first = records[1]
    assert set(first) == {"messages", "metadata"}
    assert first["messages"] == [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "1 + 1 = 2\n#### 2"},
    ]
    assert first["metadata"]["sample_id"] == "sample-1"
    assert first["metadata"]["query_ids"] == ["q1", "q1b"]
    assert first["metadata"]["verification"]["reason"] == "ok"


def test_hf_output_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    assert write_rows(rows(), "hf", out) == 3
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 3
    assert ds[1]["question"] == "What is 1 + 1?"
    assert ds[1]["query_ids"] == ["q1", "q1b"]
    assert ds[0]["seed_id"] is None
    assert json.loads(ds[1]["verification"])["details"] == {"votes": {"2": 3}}
    # Overwriting an existing export replaces it whole.
    assert write_rows(rows(1), "hf", out) == 1
    assert len(datasets.load_from_disk(str(out))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_bad_row_leaves_the_previous_export_untouched(tmp_path):
    out = tmp_path / "data.jsonl"
    write_rows(rows(), "jsonl", out)
    before = out.read_bytes()
    broken = rows() + [{"question": "Q", "answer": None, "sample_id": "sample-9"}]
    with pytest.raises(ExportError, match=r"row 3 \(sample 'sample-9'\): 'answer' must be a string"):
        write_rows(broken, "jsonl", out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]  # no temp files left behind


def test_a_failing_generator_leaves_nothing_half_written(tmp_path):
    def exploding():
        yield from rows()
        raise RuntimeError("store went away")

    out = tmp_path / "chat.jsonl"
    with pytest.raises(RuntimeError):
        write_rows(exploding(), "chat", out)
    assert list(tmp_path.iterdir()) == []


def test_hf_failure_keeps_previous_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    write_rows(rows(), "hf", out)
    with pytest.raises(ExportError):
        write_rows(rows() + [{"question": 1, "answer": "a"}], "hf", out)
    assert len(datasets.load_from_disk(str(out))) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_empty_and_unknown_format(tmp_path):
    assert write_rows([], "jsonl", tmp_path / "e.jsonl") == 0
    assert (tmp_path / "e.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        write_rows(rows(), "csv", tmp_path / "x.csv")


def test_a_symlink_target_gets_the_export_and_the_link_stays(tmp_path):
    # The temporary file was renamed over the link: the link was gone, its target untouched.
    target = tmp_path / "real.jsonl"
    write_rows(rows(1), "jsonl", target)  # an earlier export
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert write_rows(rows(), "jsonl", link) == 3
    assert link.is_symlink() and len(target.read_text().splitlines()) == 3


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    # Renamed over, the FIFO became a file and its reader got nothing (and /dev/stdout, as root,
    # became a file for every process).
    import os
    import threading

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    assert write_rows(rows(), "jsonl", fifo) == 3
    reader.join(10)
    assert fifo.is_fifo() and [json.loads(line) for line in got[0].splitlines()] == rows()


def test_an_hf_export_of_no_rows_loads(tmp_path):
    # It wrote no data file, and load_from_disk raised IndexError on the folder.
    datasets = pytest.importorskip("datasets")
    assert write_rows([], "hf", tmp_path / "empty") == 0
    ds = datasets.load_from_disk(str(tmp_path / "empty"))
    assert len(ds) == 0 and "messages" in ds.column_names and "question" in ds.column_names


def test_a_file_that_is_not_an_earlier_export_is_never_written_over(tmp_path):
    """`--out` naming the store, a config or a seed file by mistake used to replace it with rows."""
    import sqlite3

    store = tmp_path / "synthledger.db"
    con = sqlite3.connect(store)
    con.execute("CREATE TABLE events (seq INTEGER)")
    con.commit()
    con.close()
    config = tmp_path / "run.toml"
    config.write_text('[run]\nname = "x"\n')
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"id": "s1", "question": "What is 2 + 2?", "answer": "4"}\n')
    for victim, why in ((store, "is a SQLite database"), (config, "is not an earlier export"),
                        (seeds, "is not an earlier export")):
        before = victim.read_bytes()
        for fmt in ("jsonl", "chat", "openai"):
            with pytest.raises(ExportError, match=why):
                write_rows(rows(), fmt, victim)
            assert victim.read_bytes() == before
    # An earlier export of any line format, or an empty file, is replaced.
    out = tmp_path / "data.jsonl"
    for fmt in ("jsonl", "chat", "openai", "jsonl"):
        assert write_rows(rows(), fmt, out) == 3
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    assert write_rows(rows(), "chat", empty) == 3
