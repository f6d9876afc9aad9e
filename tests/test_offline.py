"""Without network and without a mirror, everything that would reach the Hugging Face hub stops with
an InputError naming what it asked for and how to run without the hub (a mirror, or a local path),
never a network traceback. The hub is made unreachable for real: its endpoint is a closed local port."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from sdd.config.datasets import DatasetParams
from sdd.errors import InputError

from conftest import REPO

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def no_hub(monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED)
    monkeypatch.setenv("SDD_DATA_MIRROR", "")


def test_a_hub_dataset_names_the_source_and_both_fixes(no_hub):
    from sdd.data.sources import fingerprint, read_rows

    ds = DatasetParams(source="openai/gsm8k", config="main", split="train", revision="main", format="gsm8k")
    for call in (lambda: fingerprint(ds, None), lambda: read_rows(ds, None)):
        with pytest.raises(
            InputError, match=r"'openai/gsm8k' is on the Hugging Face hub, which this machine cannot"
        ) as err:
            call()
        assert "SDD_DATA_MIRROR" in str(err.value) and "its `source` in params.yaml to a local .jsonl" in str(err.value)


def test_a_hub_model_names_base_model_source(no_hub):
    from sdd.model.source import fingerprint

    with pytest.raises(
        InputError, match=r"base_model.source: model 'meta-llama/Llama-3.1-8B-Instruct' is on the"
    ) as err:
        fingerprint("meta-llama/Llama-3.1-8B-Instruct", "main")
    assert "local folder" in str(err.value) and "bundled:smollm2-135m-instruct" in str(err.value)


def test_an_evaluation_task_without_a_mirror_names_the_task(no_hub):
    from sdd.eval.tasks import input_fingerprint

    with pytest.raises(InputError, match=r"evaluate.tasks.arc_challenge: dataset 'allenai/ai2_arc' is on the"):
        input_fingerprint("arc_challenge", None)


def test_dvc_repro_by_hand_offline_prints_the_message_not_a_traceback(tmp_path):
    """The stage a fresh `dvc repro` runs first, offline with no mirror: exit 2 and one plain message."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO), "SDD_DATA_MIRROR": "", "HF_ENDPOINT": CLOSED}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.sources"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "' is on the Hugging Face hub, which this machine cannot reach" in proc.stderr
    assert "SDD_DATA_MIRROR" in proc.stderr


def test_a_mirror_linked_into_the_project_is_found_without_a_variable(tmp_path, monkeypatch, mirror):
    from sdd.config import load_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mirror").symlink_to(mirror)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SDD_DATA_MIRROR", raising=False)
    assert load_params().mirror() == mirror.resolve()
    monkeypatch.setenv("SDD_DATA_MIRROR", "")  # set and empty: the hub, whatever is linked
    assert load_params().mirror() is None
