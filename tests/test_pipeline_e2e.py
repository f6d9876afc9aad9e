"""`dvc repro` in a temporary copy of the repository: runs, caches, reruns only what changed."""

import re

import pandas as pd
import pytest
import yaml

from conftest import copy_repo, run_dvc

pytestmark = pytest.mark.slow


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_repro_caches_and_reruns_only_what_changed(tmp_path, tiny_model_dir, mirror):
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base_model"]["source"] = str(tiny_model_dir)
    params["data_mirror"] = str(mirror)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"SDD_DATA_MIRROR": ""}
    targets = ["base_model", "prepare@gsm8k", "prepare@alpaca"]

    first = run_dvc(repo, "repro", *targets, env=env)
    assert {"base_model", "prepare@gsm8k", "prepare@alpaca"} <= ran(first.stdout)
    gsm8k = pd.read_parquet(repo / "data/prepared/gsm8k.parquet")
    assert len(gsm8k) == params["datasets"]["gsm8k"]["limit"]
    assert gsm8k["answer"].notna().all()
    assert (repo / "data/models/base/model.safetensors").is_file()

    second = run_dvc(repo, "repro", *targets, env=env)
    # source@* always runs (it hashes the bytes); nothing downstream recomputes.
    assert ran(second.stdout) <= {"source@gsm8k", "source@alpaca"}

    params["datasets"]["alpaca"]["limit"] = 16
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run_dvc(repo, "repro", *targets, env=env)
    assert ran(third.stdout) - {"source@gsm8k", "source@alpaca"} == {"prepare@alpaca"}
    assert len(pd.read_parquet(repo / "data/prepared/alpaca.parquet")) == 16
