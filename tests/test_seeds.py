import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from synthledger.engine import host as plugins
from synthledger.engine.api import SeedError
from synthledger.plugins.seeds import CsvSeedSource, HFSeedSource, JsonlSeedSource, ReasoningGymSeedSource


def load(cls, base: Path, **options):
    return cls(cls.Options(**options), base_dir=str(base)).load()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_registered_names():
    assert plugins.get("seed_sources", "jsonl") is JsonlSeedSource
    assert plugins.get("seed_sources", "csv") is CsvSeedSource
    assert plugins.get("seed_sources", "hf") is HFSeedSource
    assert plugins.get("seed_sources", "reasoning-gym") is ReasoningGymSeedSource


def test_jsonl_loads_in_order_with_line_number_ids_relative_to_base_dir(tmp_path):
    (tmp_path / "data").mkdir()
    jsonl(tmp_path / "data" / "s.jsonl", [
        {"question": "  What is 2+2? ", "answer": "2+2=4\n#### 4"},
        "",
        {"question": "Q two", "answer": 7},
        {"question": "Q three"},
    ])
    seeds = load(JsonlSeedSource, tmp_path, path="data/s.jsonl")
    assert [s.id for s in seeds] == ["1", "3", "4"]  # line numbers; blank line 2 skipped
    assert seeds[0].question == "What is 2+2?"
    assert seeds[0].answer == "2+2=4\n#### 4"  # the full answer text is kept
    assert seeds[1].answer == "7"
    assert seeds[2].answer is None


def test_jsonl_custom_fields_and_ids(tmp_path):
    jsonl(tmp_path / "s.jsonl", [{"id": "a", "problem": "P1", "solution": "S1"}, {"id": 2, "problem": "P2"}])
    seeds = load(JsonlSeedSource, tmp_path, path="s.jsonl", question_field="problem",
                 answer_field="solution", id_field="id")
    assert [(s.id, s.question, s.answer) for s in seeds] == [("a", "P1", "S1"), ("2", "P2", None)]


@pytest.mark.parametrize(
    "rows, options, message",
    [
        ([{"question": "ok"}, "{not json"], {}, "line 2: bad JSON"),
        ([{"question": "ok"}, [1, 2]], {}, "line 2: expected a JSON object, got list"),
        ([{"question": "ok"}, {"q": "x"}], {}, "line 2: missing field 'question' (fields: q)"),
        ([{"question": 5}], {}, "line 1: field 'question' must be a string, got int"),
        ([{"question": "ok"}, {"question": "   "}], {}, "line 2: field 'question' is empty"),
        ([{"question": "ok", "answer": ["x"]}], {}, "line 1: field 'answer' must be a string or number, got list"),
        ([{"question": "a", "id": "x"}, {"question": "b", "id": "x"}], {"id_field": "id"},
         "line 2: duplicate id 'x' (first seen at line 1)"),
        ([{"question": "a"}], {"id_field": "id"}, "line 1: missing field 'id'"),
        ([{"question": "a", "answer": "1"}], {"answer_field": "anwser"}, "answer_field 'anwser' is not present in any row"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, rows, options, message):
    path = jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SeedError) as err:
        load(JsonlSeedSource, tmp_path, path="bad.jsonl", **options)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_jsonl_empty_or_missing_file_is_an_error(tmp_path):
    write(tmp_path / "empty.jsonl", "\n  \n")
    with pytest.raises(SeedError, match="empty.jsonl: contains no seeds"):
        load(JsonlSeedSource, tmp_path, path="empty.jsonl")
    with pytest.raises(SeedError, match="nope.jsonl: seed file not found"):
        load(JsonlSeedSource, tmp_path, path="nope.jsonl")


def test_jsonl_bad_utf8_names_the_line(tmp_path):
    (tmp_path / "b.jsonl").write_bytes(b'{"question": "ok"}\n{"question": "\xff"}\n')
    with pytest.raises(SeedError, match="line 2: not UTF-8"):
        load(JsonlSeedSource, tmp_path, path="b.jsonl")


@pytest.mark.parametrize("row, field", [
    ('{"question": "What is \\ud800 1 + 1?"}', "question"),
    ('{"question": "ok", "answer": "#### \\udfff"}', "answer"),
    ('{"question": "ok", "id": "a\\ud83d"}', "id"),
])
def test_a_lone_surrogate_is_refused_naming_the_line_and_field(tmp_path, row, field):
    """JSON's `\\ud800` escape reads as a lone surrogate: no character, which UTF-8 cannot encode.
    A run crashed on it with a traceback when the first event was written (QA)."""
    jsonl(tmp_path / "s.jsonl", ['{"question": "fine", "id": "x"}', row])
    options = {"id_field": "id"} if field == "id" else {}
    with pytest.raises(SeedError, match=rf"line 2: field '{field}' holds .* a lone surrogate, which is not text"):
        load(JsonlSeedSource, tmp_path, path="s.jsonl", **options)


def test_jsonl_rows_read_as_the_json_module_reads_them(tmp_path):
    # Lines take a faster parser where it agrees with json: a big integer id (which it would read
    # as a float), a float, a nested value, NaN, a byte-order mark and blank lines read as before.
    import json

    from synthledger.engine.output.jsonl import read_jsonl

    lines = ['\ufeff{"id": 1, "question": "a"}', "", "  ", '{"id": 123456789012345678901234567890, "question": "b"}',
             '{"id": 2, "question": "c", "answer": 2.50}', '{"id": 3, "question": "d", "meta": {"x": [1, 2.0]}}',
             '{"id": 4, "question": "e", "answer": NaN}', '{"id": -0, "question": "f", "answer": "7", "ok": true}']
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = list(read_jsonl(path))
    expected = [(i, json.loads(line.lstrip("\ufeff"))) for i, line in enumerate(lines, 1) if line.strip()]
    assert repr(rows) == repr(expected)  # (repr: NaN is not equal to itself)
    assert type(rows[1][1]["id"]) is int and rows[1][1]["id"] == 123456789012345678901234567890
    seeds = load(JsonlSeedSource, tmp_path, path="s.jsonl", id_field="id")
    assert [s.id for s in seeds] == ["1", "123456789012345678901234567890", "2", "3", "4", "0"]


def test_answer_field_null_means_no_answers(tmp_path):
    jsonl(tmp_path / "s.jsonl", [{"question": "a", "answer": "1"}])
    assert load(JsonlSeedSource, tmp_path, path="s.jsonl", answer_field=None)[0].answer is None


def test_an_empty_answer_field_is_how_toml_says_no_answers(tmp_path):
    # TOML has no null, and `--set seeds.answer_field=null` is the string "null": the typo message
    # told users to "set answer_field to null", which a config file cannot say.
    jsonl(tmp_path / "s.jsonl", [{"question": "a", "answer": "1"}])
    assert load(JsonlSeedSource, tmp_path, path="s.jsonl", answer_field="")[0].answer is None
    assert load(JsonlSeedSource, tmp_path, path="s.jsonl", id_field="")[0].id == "1"
    with pytest.raises(SeedError, match='set answer_field = "" if the seeds have no answers'):
        load(JsonlSeedSource, tmp_path, path="s.jsonl", answer_field="null")


def test_unknown_option_is_refused():
    with pytest.raises(ValidationError, match="questionfield"):
        JsonlSeedSource.Options(path="x", questionfield="q")


def test_csv_loads_and_names_lines(tmp_path):
    write(tmp_path / "s.csv", 'question,answer\n"What is 2,000 + 1?",#### 2001\n"multi\nline",\nlast,3\n')
    seeds = load(CsvSeedSource, tmp_path, path="s.csv")
    assert [(s.id, s.question, s.answer) for s in seeds] == [
        ("2", "What is 2,000 + 1?", "#### 2001"), ("4", "multi\nline", None), ("5", "last", "3")
    ]
    write(tmp_path / "bad.csv", "question,answer\nok,1\ntoo,many,fields\n")
    with pytest.raises(SeedError, match=r"bad.csv, line 3: 3 fields but the header has 2"):
        load(CsvSeedSource, tmp_path, path="bad.csv")
    write(tmp_path / "noq.csv", "question,answer\nok,1\n,2\n")  # said "missing field", where JSONL says empty
    with pytest.raises(SeedError, match=r"noq.csv, line 3: field 'question' is empty"):
        load(CsvSeedSource, tmp_path, path="noq.csv")
    write(tmp_path / "nocol.csv", "prompt,answer\nok,1\n")
    with pytest.raises(SeedError, match=r"nocol.csv, line 2: missing field 'question' \(fields: answer, prompt\)"):
        load(CsvSeedSource, tmp_path, path="nocol.csv")
    write(tmp_path / "empty.csv", "question,answer\n")
    with pytest.raises(SeedError, match="contains no seeds"):
        load(CsvSeedSource, tmp_path, path="empty.csv")
    (tmp_path / "latin1.csv").write_bytes(b"question,answer\nok,1\ncaf\xe9,2\n")  # a Latin-1 export
    with pytest.raises(SeedError, match=r"latin1.csv, line 3: not UTF-8"):
        load(CsvSeedSource, tmp_path, path="latin1.csv")


def test_csv_names_the_line_of_a_malformed_header_or_row(tmp_path):
    write(tmp_path / "dup.csv", "question,answer,question\nq1,1,q2\n")
    with pytest.raises(SeedError, match=r"dup.csv, line 1: column 'question' appears twice in the header"):
        load(CsvSeedSource, tmp_path, path="dup.csv")
    write(tmp_path / "open.csv", 'question,answer\nq1,1\n"q2 never closed,2\nq3,3\n')
    with pytest.raises(SeedError, match=r"open.csv, lines 3-4: 1 fields .* quote opened on line 3 never closed"):
        load(CsvSeedSource, tmp_path, path="open.csv")
    write(tmp_path / "big.csv", 'question,answer\nq1,1\n"' + "x" * 200_000 + '",2\n')
    with pytest.raises(SeedError, match=r"big.csv, line 3: malformed CSV \(field larger than field limit"):
        load(CsvSeedSource, tmp_path, path="big.csv")


def test_hf_reads_json_files_and_saved_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    jsonl(tmp_path / "s.jsonl", [{"question": "Q1", "answer": "#### 1"}, {"question": "Q2", "answer": "#### 2"}])
    seeds = load(HFSeedSource, tmp_path, path="s.jsonl")
    assert [(s.id, s.question) for s in seeds] == [("1", "Q1"), ("2", "Q2")]

    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"q": "A", "a": "1"}, {"q": "B", "a": "2"}]),
        "test": datasets.Dataset.from_list([{"q": "C", "a": "3"}]),
    })
    ds.save_to_disk(str(tmp_path / "saved"))
    seeds = load(HFSeedSource, tmp_path, path="saved", split="test", question_field="q", answer_field="a")
    assert [(s.id, s.question, s.answer) for s in seeds] == [("1", "C", "3")]
    with pytest.raises(SeedError, match="no split 'dev'"):
        load(HFSeedSource, tmp_path, path="saved", split="dev", question_field="q")
    datasets.Dataset.from_list([{"q": "A"}, {"q": ""}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(SeedError, match=r"bad \(split 'train'\), row 2: field 'q' is empty"):
        load(HFSeedSource, tmp_path, path="bad", question_field="q")


def test_reasoning_gym_is_reproducible_and_keeps_the_solution():
    pytest.importorskip("reasoning_gym")
    a = load(ReasoningGymSeedSource, Path("."), size=5, seed=3)
    b = load(ReasoningGymSeedSource, Path("."), size=5, seed=3)
    assert a == b and len(a) == 5
    assert len({s.id for s in a}) == 5
    assert all(s.answer and s.answer.strip().lstrip("-").replace(".", "").isdigit() for s in a)
    assert all(s.meta.get("solution") for s in a)
    with pytest.raises(SeedError, match="'no_such_set'"):
        load(ReasoningGymSeedSource, Path("."), dataset="no_such_set", size=2)


def test_a_seed_set_size_beyond_the_file_is_refused_not_silently_shrunk(tmp_path):
    # It ran on the 3 seeds there were while the recorded config said 1000.
    from synthledger.engine.run.assemble import build_parts
    from synthledger.engine.run.config import ConfigError, config_from_dict

    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "answer": "1"}) + "\n" for i in range(3)))
    data = {"run": {"name": "x"}, "seeds": {"source": "jsonl", "path": "s.jsonl", "size": 1000},
            "teacher": {"model": "m", "base_url": "http://127.0.0.1:9/v1"}, "budget": {"queries": 2},
            "strategy": {"name": "answer_augmentation"}}
    with pytest.raises(ConfigError, match=r"\[seeds\] size = 1000, but the jsonl source has only 3 seeds"):
        build_parts(config_from_dict(data, base_dir=str(tmp_path)))
    data["seeds"]["size"] = 2
    assert len(build_parts(config_from_dict(data, base_dir=str(tmp_path))).seeds) == 2


def test_a_seed_path_that_is_a_folder_says_so(tmp_path):
    (tmp_path / "data").mkdir()  # it said "seed file not found" of a folder that is there
    for cls in (JsonlSeedSource, CsvSeedSource):
        with pytest.raises(SeedError, match=r"data: a folder, not a seed file"):
            load(cls, tmp_path, path="data")
        with pytest.raises(SeedError, match=r"/dev/null: not a regular file"):  # said "not found" too
            load(cls, tmp_path, path="/dev/null")
