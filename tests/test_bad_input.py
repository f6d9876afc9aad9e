"""Bad input where data enters: each case fails (or quarantines) with a message naming the file,
row or key, and leaves what was already written intact."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from sdd.artifacts import read_parquet, write_parquet
from sdd.data.schemas import PREPARED
from stages import prepare

from conftest import REPO


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with the repository's params.yaml and one local dataset `local`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # Added next to the repository's datasets, so the other sections' cross-checks still hold.
    params["datasets"]["local"] = {"source": str(tmp_path / "rows.jsonl"), "format": "alpaca", "limit": None}
    params["data_mirror"] = None
    monkeypatch.delenv("SDD_DATA_MIRROR", raising=False)
    monkeypatch.chdir(tmp_path)

    def write(rows: list, **overrides):
        params["datasets"]["local"].update(overrides)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path

    return write


def test_empty_dataset(project):
    project([])
    with pytest.raises(ValueError, match=r"dataset 'local' .*rows\.jsonl\) has no rows"):
        prepare.main(["local"])


def test_wrong_field_names_fail_and_keep_the_quarantine(project):
    """A failed run writes none of the stage's outputs; its quarantine goes to the scratch folder."""
    root = project([{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(10)])
    prepare.main(["local"])
    outputs = [
        "data/prepared/local.parquet",
        "data/prepared/local.rejected.parquet",
        "metrics/prepare/local.json",
        "metrics/prepare/local.headline.json",
    ]
    before = {name: (root / name).read_bytes() for name in outputs}

    project([{"question": f"Q{i}?", "answer": f"A{i} #### {i}"} for i in range(10)])
    with pytest.raises(ValueError) as err:
        prepare.main(["local"])
    msg = str(err.value)
    assert "10 of 10 rows rejected" in msg and "as format 'alpaca' (`datasets.local.format`)" in msg
    assert "\"missing field: 'instruction'\" (10 rows; first at line 1, 2, 3)" in msg
    assert "Likely cause: the rows have the fields of format 'gsm8k' (['answer', 'question']" in msg
    assert msg.endswith(
        "Nothing was written (the stage's outputs are as they were); "
        "this run's rejected rows: .sdd-scratch/prepare/local.rejected.parquet"
    )
    assert {name: (root / name).read_bytes() for name in outputs} == before
    rejected = pd.read_parquet(root / ".sdd-scratch/prepare/local.rejected.parquet")
    assert len(rejected) == 10 and set(rejected["reason"]) == {"missing field: 'instruction'"}


def test_limit_larger_than_the_data_uses_all_rows(project, caplog):
    root = project([{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(5)], limit=50)
    prepare.main(["local"])
    assert len(pd.read_parquet(root / "data/prepared/local.parquet")) == 5
    assert "datasets.local.limit=50 but only 5 valid rows exist" in caplog.text
    metrics = json.loads((root / "metrics/prepare/local.json").read_text())
    assert metrics["written"] == 5 and metrics["limit"] == 50


def test_unknown_dataset_name_in_the_command(project):
    project([{"instruction": "a", "input": "", "output": "b"}])
    with pytest.raises(ValueError, match="unknown dataset 'loacl' \\(did you mean 'local'\\?\\)"):
        prepare.main(["loacl"])


def test_missing_local_source_file(project, tmp_path):
    project([], source=str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl' does not exist; fix `source`"):
        prepare.main(["local"])


def test_missing_split_in_the_mirror(project, mirror, monkeypatch):
    project([], source="openai/gsm8k", config="main", split="validation", format="gsm8k")
    monkeypatch.setenv("SDD_DATA_MIRROR", str(mirror))
    with pytest.raises(FileNotFoundError, match=r"no .*validation\.jsonl.*present for this id: .*main/test\.jsonl"):
        prepare.main(["local"])


def test_parquet_with_a_wrong_schema_is_refused_by_the_reader(tmp_path):
    good = pd.DataFrame(
        [{"id": "0123456789abcdef", "dataset": "d", "instruction": "i", "context": "", "response": "r", "answer": None}]
    )
    path = tmp_path / "ok.parquet"
    write_parquet(good.astype({"answer": "str"}), path, PREPARED)
    assert len(read_parquet(path, PREPARED, "prepare@d")) == 1

    bad = good.drop(columns=["response"]).assign(extra=1)
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError) as err:
        read_parquet(tmp_path / "bad.parquet", PREPARED, "prepare@d")
    msg = str(err.value)
    assert "bad.parquet does not match the prepared contract (version 1)" in msg
    assert "response" in msg and "dvc repro prepare@d" in msg

    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="junk.parquet is not a readable Parquet file"):
        read_parquet(tmp_path / "junk.parquet", PREPARED, "prepare@d")


def test_invalid_rows_are_never_written(tmp_path):
    bad = pd.DataFrame(
        [{"id": "xyz", "dataset": "d", "instruction": "  ", "context": "", "response": "r", "answer": None}]
    ).astype({"answer": "str"})
    with pytest.raises(ValueError, match="refusing to write invalid data"):
        write_parquet(bad, tmp_path / "out.parquet", PREPARED)
    assert not (tmp_path / "out.parquet").exists()
