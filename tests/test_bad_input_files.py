"""Bad source files, round two: each is a real file fed through the real `prepare` stage, and the
test asserts on the message the user reads (the file, the format, the reasons with their field
names and first rows, the likely cause and its fix) or on the quarantined row and its reason."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import re
import subprocess
import sys
import zipfile

import pandas as pd
import pytest
import yaml

from sdd.config.datasets import DatasetParams
from sdd.data import sources
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


# --- 9. JSON nested deeper than the readers recurse ----------------------------------------------


def gsm8k_lines(n: int) -> list[str]:
    return [json.dumps({"question": f"Q{i}?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) for i in range(n)]


def test_deeply_nested_row_is_quarantined_by_the_stage_process(project):
    """An ignored field nested 100,000 levels used to end `prepare` with a RecursionError traceback."""
    deep = '{"question": "Q?", "answer": "2 + 2 = 4\\n#### 4", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    deepest_kept = '{"question": "R?", "answer": "3 + 3 = 6\\n#### 6", "x": ' + "[" * 99 + "]" * 99 + "}"  # 100 levels
    root = project("rows.jsonl", "\n".join([*gsm8k_lines(8), deep, deepest_kept, ""]).encode(), format="gsm8k")
    env = {k: v for k, v in os.environ.items() if k != "SDD_DATA_MIRROR"} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.prepare", "local"], cwd=root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert rejected(root) == [(8, "JSON nested deeper than 100 levels: line 9")]
    raw = pd.read_parquet(root / "data/prepared/local.rejected.parquet")["raw"][0]
    assert raw == deep[:2000]  # the quarantine keeps the row's first 2,000 characters, as text
    prepared = pd.read_parquet(root / "data/prepared/local.parquet")
    assert list(prepared["answer"]) == [str(i + 1) for i in range(8)] + ["6"]


def test_deeply_nested_json_array_is_refused(project):
    deep = {"instruction": "Deep.", "input": "", "output": "x", "x": []}
    text = json.dumps([*alpaca_rows(3), deep]).replace("[]", "[" * 5_000 + "]" * 5_000)
    root = project("rows.json", text.encode())
    assert failure() == (
        f"{root / 'rows.json'} has a row nested deeper than 100 levels of JSON arrays and objects: flatten or "
        "remove the deep field, or write the rows as JSON lines (.jsonl), where such a row is set aside and the "
        "others are kept"
    )


# --- 10. final answers are kept exactly, never through floating point ----------------------------


def test_gsm8k_answers_are_kept_exactly(project):
    long = "1234567890" * 40  # 400 digits: it became 10^400 through a 28-digit normalisation
    answers = [long, "9,007,199,254,740,993", "12345678901234567890.50", "1.5/2", "0.50", "-6/8"]
    rows = [{"question": f"Q{i}?", "answer": f"Work.\n#### {a}"} for i, a in enumerate(answers)]
    rows.append({"question": "Huge?", "answer": "Work.\n#### 1/" + "3" * 5_000})
    root = project("rows.jsonl", rows, format="gsm8k")
    prepare.main(["local"])
    assert list(pd.read_parquet(root / "data/prepared/local.parquet")["answer"]) == [
        long,
        "9007199254740993",
        "12345678901234567890.5",
        "3/4",
        "0.5",
        "-3/4",
    ]
    assert rejected(root) == [
        (
            6,
            "invalid: field 'answer' has a final answer that cannot be kept exactly "
            "(the fraction has 5001 digits; at most 4300 can be reduced exactly)",
        )
    ]


def test_openmath_json_numbers_are_kept_as_written(project):
    solution = '"question": "Q?", "generated_solution": "\\\\boxed{x}"'
    lines = [
        '{"question": "A?", "generated_solution": "\\\\boxed{2.5}", "expected_answer": 2.50}',
        '{"question": "B?", "generated_solution": "\\\\boxed{x}", "expected_answer": 12345678901234567890.5}',
        '{"question": "C?", "generated_solution": "\\\\boxed{y}", "expected_answer": 1e400}',
        '{"question": "D?", "generated_solution": "\\\\boxed{z}", "expected_answer": 123456789012345678901234567890}',
        "{" + solution + ', "expected_answer": ' + "7" * 5_000 + "}",
    ]
    root = project("rows.jsonl", "\n".join(lines).encode(), format="openmath", prepare={"max_rejected_fraction": 0.25})
    prepare.main(["local"])
    prepared = pd.read_parquet(root / "data/prepared/local.parquet")
    assert list(prepared["answer"]) == ["2.5", "12345678901234567890.5", "1e400", "123456789012345678901234567890"]
    assert rejected(root) == [(4, "number too long: JSON integer with more than 4300 digits: line 5")]


# --- 11. compressed local files ------------------------------------------------------------------


def parquet_bytes(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer)
    return buffer.getvalue()


JSONL = "".join(json.dumps(r) + "\n" for r in alpaca_rows(3)).encode()


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("rows.jsonl.gz", gzip.compress(JSONL)),
        ("rows.jsonl.bz2", bz2.compress(JSONL)),
        ("rows.jsonl.xz", lzma.compress(JSONL)),
        ("rows.json.gz", gzip.compress(json.dumps(alpaca_rows(3)).encode())),
        ("rows.csv.gz", gzip.compress(b"instruction,input,output\nSay 0.,,0\nSay 1.,,1\nSay 2.,,2\n")),
        ("rows.parquet.gz", gzip.compress(parquet_bytes(alpaca_rows(3)))),
    ],
    ids=["jsonl.gz", "jsonl.bz2", "jsonl.xz", "json.gz", "csv.gz", "parquet.gz"],
)
def test_compressed_local_files_are_read(project, filename, data):
    root = project(filename, data)
    assert DatasetParams(source=str(root / filename), format="alpaca").is_local
    prepare.main(["local"])
    assert list(pd.read_parquet(root / "data/prepared/local.parquet")["instruction"]) == ["Say 0.", "Say 1.", "Say 2."]
    ds = DatasetParams(source=str(root / filename), format="alpaca")
    assert sources.fingerprint(ds, None)["sha256"] == hashlib.sha256(data).hexdigest()  # the file's own bytes


def test_compressed_file_rejections_diagnose_the_unpacked_bytes(project):
    root = project("rows.jsonl.gz", gzip.compress(b"Name a colour.\nBlue.\nAdd 2 and 3.\nFive.\n"))
    msg = failure()
    assert f"4 of 4 rows rejected (100.0% > prepare.max_rejected_fraction=0.2) reading {root / 'rows.jsonl.gz'}" in msg
    assert "(4 rows; first at line 1, 2, 3)" in msg
    assert "Likely cause: rows.jsonl.gz (unpacked) is plain text, not JSON (it starts with 'Name a colour.')" in msg


def test_zip_compressed_file_is_refused_with_how_to_unpack_it(project):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("rows.jsonl", JSONL)
    root = project("rows.jsonl.zip", buffer.getvalue())
    assert failure() == (
        f"{root / 'rows.jsonl.zip'}: zip-compressed input is not supported (gzip, bzip2 and xz are: .gz, .bz2, .xz). "
        "Unpack it (`unzip -p rows.jsonl.zip > rows.jsonl`) and point `source` at the unpacked .jsonl file"
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [(JSONL, "BadGzipFile: Not a gzipped file (b'{\"')"), (gzip.compress(JSONL)[:-12], "EOFError: ")],
    ids=["not-gzip", "cut-short"],
)
def test_compressed_file_that_cannot_be_unpacked(project, data, error):
    root = project("rows.jsonl.gz", data)
    msg = failure()
    assert msg.startswith(f"{root / 'rows.jsonl.gz'} cannot be unpacked as gzip ({error}")
    assert msg.endswith(
        "): if it is cut short, copy or download it again; if it is not gzip-compressed, rename it to rows.jsonl "
        "(and `source` with it)"
    )


# --- 12. binary files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "read_error"),
    [
        ("rows.jsonl", "rows rejected"),
        ("rows.json", "rows.json is not a valid UTF-8 JSON file ("),
        ("rows.csv", "rows.csv is not a readable UTF-8 CSV file ("),
    ],
)
def test_binary_file_is_diagnosed_as_binary(project, filename, read_error):
    data = random.Random(0).randbytes(4096)  # what os.urandom gives, reproducibly
    project(filename, data)
    msg = failure()
    assert read_error in msg
    suffix = filename[4:]
    cause = (
        rf"Likely cause: {re.escape(filename)} is binary data, not text \(\d+% of its first 4096 bytes are control "
        rf"characters or not UTF-8; it starts with bytes {data[:8].hex(' ')}\), so it is not \{suffix} data, which "
        rf"is UTF-8 text: point `source` at the \{suffix} file, or export the rows from the program that wrote this "
        r"file as JSON lines \(\.jsonl\) or CSV"
    )
    assert re.search(cause, msg), msg
    assert "plain text" not in msg
