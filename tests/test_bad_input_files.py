"""Bad source files, round two: each is a real file fed through the real `prepare` stage, and the
test asserts on the message the user reads (the file, the format, the reasons with their field
names and first rows, the likely cause and its fix) or on the quarantined row and its reason."""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import pandas as pd
import pytest
import yaml

from stages import prepare

from conftest import REPO


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory (the working directory, with params.yaml) holding one dataset `local`.

    `write(filename, data, **entry)` writes the source file (bytes, or rows as JSON lines) and the
    params with `datasets.local` updated by `entry`; `prepare=` updates the `prepare` section.
    """
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data_mirror"] = None
    monkeypatch.delenv("SDD_DATA_MIRROR", raising=False)
    monkeypatch.chdir(tmp_path)

    def write(filename: str, data: bytes | list, prepare: dict | None = None, **entry):
        if isinstance(data, list):
            data = "".join(json.dumps(r) + "\n" for r in data).encode()
        (tmp_path / filename).write_bytes(data)
        params["datasets"]["local"] = {"source": str(tmp_path / filename), "format": "alpaca", "limit": None, **entry}
        params["prepare"].update(prepare or {})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        return tmp_path

    return write


def failure() -> str:
    with pytest.raises(ValueError) as err:
        prepare.main(["local"])
    return str(err.value)


def alpaca_rows(n: int) -> list[dict]:
    return [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(n)]


def rejected(root) -> list[tuple[int, str]]:
    df = pd.read_parquet(root / "data/prepared/local.rejected.parquet")
    return list(zip(df["row"], df["reason"], strict=True))


# --- 1. "too many rows rejected": the file, the format, the reasons, the likely cause ----------


def test_rows_of_another_format_suggest_that_format(project):
    root = project("rows.jsonl", alpaca_rows(10), format="dolly")
    msg = failure()
    assert f"10 of 10 rows rejected (100.0% > prepare.max_rejected_fraction=0.2) reading {root / 'rows.jsonl'}" in msg
    assert "as format 'dolly' (`datasets.local.format`)" in msg
    assert "\"missing field: 'response'\" (10 rows; first at line 1, 2, 3)" in msg
    assert "Likely cause: the rows have the fields of format 'alpaca' (['input', 'instruction', 'output']" in msg
    assert "set `datasets.local.format: alpaca`" in msg


def test_most_frequent_reasons_keep_their_field_names_and_first_rows(project):
    rows = (
        [{"instruction": "No output."}] * 3
        + [{"output": "No instruction."}] * 4
        + [{"instruction": 7, "input": "", "output": "x"}] * 2
        + [{"instruction": "Fine.", "input": "", "output": "ok"}]
    )
    project("rows.jsonl", rows)
    msg = failure()
    assert "9 of 10 rows rejected" in msg
    assert (
        "Most frequent reasons: \"missing field: 'instruction'\" (4 rows; first at line 4, 5, 6); "
        "\"missing field: 'output'\" (3 rows; first at line 1, 2, 3); "
        "\"wrong type: field 'instruction' must be text, got int\" (2 rows; first at line 8, 9)." in msg
    )
    assert "Check that `datasets.local.format` (alpaca) matches the source." in msg  # no single cause


@pytest.mark.parametrize(
    ("filename", "data", "cause"),
    [
        (
            "rows.jsonl",
            gzip.compress(b'{"instruction": "a", "input": "", "output": "b"}\n' * 50),
            "Likely cause: rows.jsonl is gzip-compressed (it starts with bytes 1f 8b), not .jsonl data: "
            "decompress it (`gzip -dc rows.jsonl > rows.unpacked.jsonl`) and point `source` at the result.",
        ),
        (
            "rows.jsonl",
            "zip",
            "Likely cause: rows.jsonl is a zip archive (it starts with bytes 50 4b 03 04), not .jsonl data: "
            "decompress it (`unzip -p rows.jsonl > rows.unpacked.jsonl`) and point `source` at the result; "
            "a spreadsheet (.xlsx) is one too: export the sheet as CSV.",
        ),
        (
            "rows.jsonl",
            b"Name a colour.\nBlue.\nAdd 2 and 3.\nFive.\n",
            "Likely cause: rows.jsonl is plain text, not JSON (it starts with 'Name a colour.')",
        ),
        (
            "rows.jsonl",
            json.dumps(alpaca_rows(3), indent=2).encode(),
            "Likely cause: rows.jsonl holds a JSON array, not one JSON object per line: rename it to .json",
        ),
        (
            "rows.jsonl",
            json.dumps(alpaca_rows(3)).encode(),  # the array on one line: one row, a list
            "Likely cause: rows.jsonl holds a JSON array, not one JSON object per line",
        ),
    ],
    ids=["gzip", "zip", "plain-text", "json-array", "json-array-one-line"],
)
def test_whole_file_causes_in_a_jsonl(project, filename, data, cause):
    if data == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("rows.jsonl", "".join(json.dumps(r) + "\n" for r in alpaca_rows(20)))
        data = buffer.getvalue()
    project(filename, data)
    msg = failure()
    assert "rows rejected" in msg and "as format 'alpaca'" in msg
    assert cause in msg


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        (
            "rows.parquet",
            b"instruction,input,output\nA?,,B.\n",
            "rows.parquet is not a readable Parquet file (",
        ),
        (
            "rows.csv",
            gzip.compress(b"instruction,input,output\nA?,,B.\n"),
            "rows.csv is not a readable UTF-8 CSV file (",
        ),
        (
            "rows.json",
            gzip.compress(json.dumps(alpaca_rows(2)).encode()),
            "rows.json is not a valid UTF-8 JSON file (",
        ),
    ],
    ids=["text-as-parquet", "gzip-csv", "gzip-json"],
)
def test_whole_file_causes_in_unreadable_files(project, filename, data, message):
    project(filename, data)
    msg = failure()
    assert message in msg
    expected = (
        "Likely cause: rows.parquet is not Parquet (no 'PAR1' header; it starts with 'instruction,input,output')"
        if filename.endswith(".parquet")
        else f"Likely cause: {filename} is gzip-compressed (it starts with bytes 1f 8b)"
    )
    assert expected in msg


def test_csv_with_a_misspelled_column(project):
    project("rows.csv", b"instruction,input,outptu\nA?,,B.\nC?,,D.\n")
    msg = failure()
    assert "\"missing field: 'output'\" (2 rows; first at row 0, 1)" in msg
    assert (
        "Likely cause: the rows have no column 'output' (columns present: ['input', 'instruction', 'outptu']): "
        "rename column 'outptu' to 'output'" in msg
    )


def test_parquet_with_a_mistyped_column(project):
    buffer = io.BytesIO()
    pd.DataFrame({"instruction": ["A?", "B?", "C?"], "input": ["", "", ""], "output": [1, 2, 3]}).to_parquet(buffer)
    project("rows.parquet", buffer.getvalue())
    msg = failure()
    assert "\"wrong type: field 'output' must be text, got int\" (3 rows; first at row 0, 1, 2)" in msg
    assert "Likely cause: column 'output' holds int values, but format 'alpaca' needs text there" in msg


# --- 2, 3. text that is not valid, visible Unicode -------------------------------------------------


def test_lone_surrogate_is_a_quarantined_row(project):
    lines = alpaca_rows(9) + [{"instruction": "Broken.", "input": "", "output": "\ud800"}]
    root = project("rows.jsonl", "".join(json.dumps(r) + "\n" for r in lines).encode())  # "\ud800" escaped
    prepare.main(["local"])
    assert rejected(root) == [(9, "invalid: field 'output' is not valid Unicode (lone surrogate U+D800)")]
    assert len(pd.read_parquet(root / "data/prepared/local.parquet")) == 9


def test_lone_surrogate_in_a_json_array(project):
    rows = alpaca_rows(9) + [{"instruction": "Broken.", "input": "", "output": "ok", "note": "\udc00"}]
    root = project("rows.json", json.dumps(rows).encode())
    prepare.main(["local"])
    [(row, reason)] = rejected(root)
    assert (row, reason) == (9, "invalid: field 'note' is not valid Unicode (lone surrogate U+DC00)")
    raw = pd.read_parquet(root / "data/prepared/local.rejected.parquet")["raw"][0]
    assert "\\udc00" in raw  # kept as its escape: the quarantine file stays valid UTF-8


def test_control_characters_and_invisible_only_fields(project):
    bad = [
        {"instruction": "Ring\u0007 the bell.", "input": "", "output": "x"},
        {"instruction": "Nul", "input": "a\x00b", "output": "x"},
        {"instruction": "C1", "input": "", "output": "\u0085next line"},
        {"instruction": "\u200b\u2060\ufeff \u00a0", "input": "", "output": "x"},
        {"instruction": "Tab\tnewline\ncarriage\r fine", "input": "\u200b", "output": "y"},
    ]
    root = project("rows.jsonl", alpaca_rows(16) + bad)
    prepare.main(["local"])
    allowed = "(only tab, newline and carriage return are allowed)"
    assert rejected(root) == [
        (16, f"invalid: field 'instruction' contains control character U+0007 {allowed}"),
        (17, f"invalid: field 'input' contains control character U+0000 {allowed}"),
        (18, f"invalid: field 'output' contains control character U+0085 {allowed}"),
        (19, "empty text: field 'instruction' is empty (only invisible characters)"),
    ]
    prepared = pd.read_parquet(root / "data/prepared/local.parquet")
    assert prepared["context"].iloc[-1] == ""  # an optional field of invisible characters is empty


# --- 4. GSM8k: the number after the last '####' ---------------------------------------------------


def test_gsm8k_final_answer_is_the_number_after_the_last_marker(project):
    rows = [
        {"question": "Q1?", "answer": "First #### 5, then more.\n#### 1,000"},
        {"question": "Q2?", "answer": "It drops.\n#### -15"},
        {"question": "Q3?", "answer": "A quarter each.\n#### 3/4"},
        {"question": "Q4?", "answer": "Price.\n#### $2.50"},
        {"question": "Q5?", "answer": "Fruit.\n#### banana"},
        {"question": "Q6?", "answer": "No marker, 42."},
    ]
    root = project("rows.jsonl", rows, format="gsm8k", prepare={"max_rejected_fraction": 0.5})
    prepare.main(["local"])
    assert list(pd.read_parquet(root / "data/prepared/local.parquet")["answer"]) == ["1000", "-15", "3/4", "2.5"]
    assert rejected(root) == [
        (4, "invalid: field 'answer' has no number after its last '####'"),
        (5, "invalid: field 'answer' has no final answer after '####'"),
    ]


# --- 5, 6. byte-order marks and duplicate keys ----------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "body"),
    [
        ("rows.jsonl", "".join(json.dumps(r) + "\n" for r in alpaca_rows(3))),
        ("rows.json", json.dumps(alpaca_rows(3))),
        ("rows.csv", "instruction,input,output\nSay 0.,,0\nSay 1.,,1\nSay 2.,,2\n"),
    ],
    ids=["jsonl", "json", "csv"],
)
def test_utf8_byte_order_mark_is_accepted(project, filename, body):
    root = project(filename, b"\xef\xbb\xbf" + body.encode())
    prepare.main(["local"])
    assert list(pd.read_parquet(root / "data/prepared/local.parquet")["instruction"]) == ["Say 0.", "Say 1.", "Say 2."]
    assert json.loads((root / "metrics/prepare/local.json").read_text())["rejected"] == 0


def test_duplicate_key_is_a_rejected_row(project):
    lines = [json.dumps(r) for r in alpaca_rows(9)]
    lines.append('{"instruction": "a", "instruction": "b", "input": "", "output": "c"}')
    root = project("rows.jsonl", ("\n".join(lines) + "\n").encode())
    prepare.main(["local"])
    assert rejected(root) == [(9, "duplicate key 'instruction': ambiguous row")]

    nested = '{"instruction": "a", "input": "", "output": "c", "meta": {"k": 1, "k": 2}}'
    nested = json.dumps(alpaca_rows(9))[:-1] + ", " + nested + "]"
    root = project("rows.json", nested.encode())
    prepare.main(["local"])
    assert rejected(root) == [(9, "duplicate key 'k': ambiguous row")]


# --- 8. sources outside the project ---------------------------------------------------------------


def test_source_outside_the_project_is_refused(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "rows.jsonl"
    outside.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(3)))
    root = project("rows.jsonl", b"")
    (root / "rows.jsonl").unlink()
    (root / "rows.jsonl").symlink_to(outside)  # inside by name, outside once the link is followed
    with pytest.raises(ValueError) as err:
        prepare.main(["local"])
    assert str(err.value).startswith(
        f"dataset source '{root / 'rows.jsonl'}' resolves to {outside.resolve()}, outside the project directory "
        f"{root.resolve()}; rejected rows are copied (up to 2,000 characters each) into the quarantine file that "
        "`dvc push` uploads. Move the file into the project or the mirror, or set `allow_outside: true`"
    )
    assert not (root / "data/prepared/local.parquet").exists()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["datasets"]["local"]["allow_outside"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    prepare.main(["local"])
    assert len(pd.read_parquet(root / "data/prepared/local.parquet")) == 3
