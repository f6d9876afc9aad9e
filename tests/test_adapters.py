"""Adapters on rows the tests write, malformed ones included: exact accepted rows and reasons."""

import json

import pytest

from sdd.config.datasets import DatasetParams
from sdd.data.adapters import adapt_rows, row_id
from sdd.data.sources import read_rows


def rows_from_jsonl(tmp_path, lines: list[bytes]):
    path = tmp_path / "src.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return read_rows(DatasetParams(source=str(path), format="alpaca"), None)


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
    assert out.counts()["rejected_by_reason"] == {
        "duplicate": 1,
        "empty text": 2,
        "invalid utf-8": 1,
        "malformed json": 1,
        "missing field": 1,
        "wrong type": 2,
    }


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
    ]
    out = adapt_rows(rows, "g", "gsm8k", 1000)
    assert out.accepted[0]["response"] == "She sold 48/2 = 24 clips.\n#### 1,072"
    assert out.accepted[0]["answer"] == "1072"
    assert out.rejected[0]["reason"] == "invalid: field 'answer' has no final answer after '####'"


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
        raw = read_rows(DatasetParams(source=str(tmp_path / name), format="alpaca"), None)
        out = adapt_rows(raw, "x", "alpaca", 1000)
        assert [r["instruction"] for r in out.accepted] == ["A?"], name
        assert len(out.rejected) == 1 and out.rejected[0]["reason"].startswith("empty text"), name
