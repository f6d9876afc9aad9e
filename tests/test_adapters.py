"""Adapters on rows the tests write, malformed ones included: exact accepted rows and reasons."""

import json
import re

import pytest

from sdd.config.datasets import DatasetParams
from sdd.data.adapters import adapt_rows, row_id
from sdd.data.sources import read_rows


def rows_from_jsonl(tmp_path, lines: list[bytes]):
    path = tmp_path / "src.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return read_rows(DatasetParams(source=str(path), format="alpaca"), None, root=tmp_path)


def j(obj) -> bytes:
    return json.dumps(obj).encode()


def test_alpaca_accepts_and_rejects_with_reasons(tmp_path):
    good = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    raw = rows_from_jsonl(
        tmp_path,
        [
            j(good),
            j({"instruction": "Add.", "input": "2 and 3", "output": "5"}),
            j({"instruction": "No output"}),  # missing field
            j({"instruction": 7, "input": "", "output": "x"}),  # wrong type
            j({"instruction": "   ", "input": "", "output": "x"}),  # empty text
            b'{"instruction": "bad \xff byte", "output": "x"}',  # non-UTF-8
            j(good),  # duplicate
            b'{"instruction": "cut',  # malformed JSON
            j(["not", "an", "object"]),  # wrong row type
            j({"instruction": "Null", "input": None, "output": None}),  # null where text is required
        ],
    )
    out = adapt_rows(raw, "alp", "alpaca", max_chars=1000)
    assert [r["instruction"] for r in out.accepted] == ["Name a colour.", "Add."]
    assert out.accepted[1] == {
        "id": row_id({"instruction": "Add.", "input": "2 and 3", "output": "5"}),
        "dataset": "alp",
        "instruction": "Add.",
        "context": "2 and 3",
        "response": "5",
        "answer": None,
    }
    reasons = [(r["row"], r["reason"]) for r in out.rejected]
    assert reasons == [
        (2, "missing field: 'output'"),
        (3, "wrong type: field 'instruction' must be text, got int"),
        (4, "empty text: field 'instruction' is empty"),
        (5, "invalid utf-8: line 6, byte 21"),
        (6, "duplicate: same instruction, context and response as row 0"),
        (7, "malformed json: line 8: Unterminated string starting at"),
        (8, "wrong type: row is list, expected a JSON object"),
        (9, "empty text: field 'output' is null"),
    ]
    assert out.counts()["rejected_by_reason"] == {  # the whole reason, row-specific numbers as N
        "duplicate: same instruction, context and response as row N": 1,
        "empty text: field 'instruction' is empty": 1,
        "empty text: field 'output' is null": 1,
        "invalid utf-8: line N, byte N": 1,
        "malformed json: line N: Unterminated string starting at": 1,
        "missing field: 'output'": 1,
        "wrong type: field 'instruction' must be text, got int": 1,
        "wrong type: row is list, expected a JSON object": 1,
    }
    assert out.top_reasons(2) == [
        ("missing field: 'output'", 1, [2]),
        ("wrong type: field 'instruction' must be text, got int", 1, [3]),
    ]


def test_too_long_rows_are_quarantined(tmp_path):
    raw = rows_from_jsonl(tmp_path, [j({"instruction": "x" * 50, "input": "", "output": "y" * 60})])
    out = adapt_rows(raw, "alp", "alpaca", max_chars=100)
    assert out.accepted == []
    assert out.rejected[0]["reason"] == "too long: 110 characters > prepare.max_chars=100"


def test_dolly():
    from sdd.data.adapters import RawRow

    rows = [
        RawRow(
            0, {"instruction": "Summarise.", "context": "Long text.", "response": "Short.", "category": "summarization"}
        ),
        RawRow(1, {"instruction": "Q?", "response": "A."}),
    ]
    out = adapt_rows(rows, "d", "dolly", 1000)
    assert [(r["instruction"], r["context"], r["response"]) for r in out.accepted] == [
        ("Summarise.", "Long text.", "Short."),
        ("Q?", "", "A."),
    ]


def test_dolly_hhrlhf_strips_the_alpaca_template():
    from sdd.data.adapters import RawRow

    prompt = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nwhat is kangen water?\n\n### Response:\n"
    )
    rows = [
        RawRow(0, {"prompt": prompt, "response": "Alkaline ionized water."}),
        RawRow(1, {"prompt": "Human: hi\nAssistant:", "response": "Hello"}),
    ]
    out = adapt_rows(rows, "h", "dolly_hhrlhf", 1000)
    assert [(r["instruction"], r["context"]) for r in out.accepted] == [("what is kangen water?", "")]
    assert out.rejected[0]["reason"].startswith("invalid: field 'prompt' does not follow the Alpaca template")


def test_gsm8k_answer_and_calculator_markup():
    from sdd.data.adapters import RawRow

    rows = [
        RawRow(0, {"question": "Q1?", "answer": "She sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072"}),
        RawRow(1, {"question": "Q2?", "answer": "no final answer here"}),
        RawRow(2, {"question": "Q3?", "answer": "Half #### 5 of it.\n#### -1,234.50"}),
        RawRow(3, {"question": "Q4?", "answer": "Three of six.\n#### 3/6"}),
        RawRow(4, {"question": "Q5?", "answer": "A fruit.\n#### banana"}),
        RawRow(5, {"question": "Q6?", "answer": "Nothing.\n#### "}),
    ]
    out = adapt_rows(rows, "g", "gsm8k", 1000)
    assert out.accepted[0]["response"] == "She sold 48/2 = 24 clips.\n#### 1,072"
    assert [r["answer"] for r in out.accepted] == ["1072", "-1234.5", "1/2"]
    assert [(r["row"], r["reason"]) for r in out.rejected] == [
        (1, "invalid: field 'answer' has no final answer after '####'"),
        (4, "invalid: field 'answer' has no number after its last '####'"),
        (5, "invalid: field 'answer' has no number after its last '####'"),
    ]


@pytest.mark.parametrize("question_key", ["question", "problem"])
def test_openmath_both_versions(question_key):
    from sdd.data.adapters import RawRow

    rows = [
        RawRow(0, {question_key: "What is 2+2?", "generated_solution": "2+2 = \\boxed{4}", "expected_answer": 4}),
        RawRow(1, {question_key: "What?", "generated_solution": "...", "expected_answer": None}),
    ]
    out = adapt_rows(rows, "om", "openmath", 1000)
    assert out.accepted[0]["instruction"] == "What is 2+2?" and out.accepted[0]["answer"] == "4"
    assert out.rejected[0]["reason"] == "invalid: field 'expected_answer' is missing or null"


def test_ids_are_stable_and_sampling_is_deterministic():
    from stages.prepare import sample

    assert row_id({"a": 1, "b": "x"}) == row_id({"b": "x", "a": 1})
    rows = [{"i": i} for i in range(100)]
    first, again, other = sample(rows, 10, 3), sample(rows, 10, 3), sample(rows, 10, 4)
    assert first == again and first != other
    assert [r["i"] for r in first] == sorted(r["i"] for r in first)
    assert sample(rows, 500, 0) == rows


def test_csv_and_parquet_sources(tmp_path):
    import pandas as pd

    df = pd.DataFrame(
        [{"instruction": "A?", "input": "", "output": "B."}, {"instruction": None, "input": "", "output": "C."}]
    )
    df.to_parquet(tmp_path / "s.parquet")
    df.to_csv(tmp_path / "s.csv", index=False)
    for name in ("s.parquet", "s.csv"):
        raw = read_rows(DatasetParams(source=str(tmp_path / name), format="alpaca"), None, root=tmp_path)
        out = adapt_rows(raw, "x", "alpaca", 1000)
        assert [r["instruction"] for r in out.accepted] == ["A?"], name
        assert len(out.rejected) == 1 and out.rejected[0]["reason"].startswith("empty text"), name


def test_a_source_outside_the_root_needs_allow_outside(tmp_path):
    (tmp_path / "src.jsonl").write_text(json.dumps({"instruction": "A?", "input": "", "output": "B."}) + "\n")
    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(ValueError, match=r"resolves to .*src\.jsonl, outside the project directory .*project; "):
        read_rows(DatasetParams(source=str(tmp_path / "src.jsonl"), format="alpaca"), None, root=project)
    allowed = DatasetParams(source=str(tmp_path / "src.jsonl"), format="alpaca", allow_outside=True)
    assert len(read_rows(allowed, None, root=project)) == 1
    # inside the mirror is fine too
    assert len(read_rows(DatasetParams(source=str(tmp_path / "src.jsonl"), format="alpaca"), tmp_path, project)) == 1


def test_text_rules():
    from sdd.data.adapters import RawRow, check_text, visible

    assert not visible("\u200b\u2060\ufeff \t\u00a0\u00ad") and visible("\u200bx")
    check_text({"a": "tab\tnew line\ncr\r", "b": ["é", {"k": "ü"}], "n": 3})
    for row, reason in [
        ({"a": "x\x1b[31m"}, "field 'a' contains control character U+001B"),
        ({"a": {"deep": ["\x7f"]}}, "field 'a' contains control character U+007F"),
        ({"a\ud83d": "x"}, "field 'a\\ud83d' is not valid Unicode (lone surrogate U+D83D)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(reason)):
            check_text(row)
    out = adapt_rows([RawRow(0, {"instruction": "\u00a0\u200b", "input": "\u2060", "output": "x"})], "a", "alpaca", 99)
    assert out.rejected[0]["reason"] == "empty text: field 'instruction' is empty (only invisible characters)"
