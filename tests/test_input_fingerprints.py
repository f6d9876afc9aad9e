"""The inputs DVC cannot hash itself are fingerprinted by one always-run stage (`sources`): the base
model's source, each dataset and the evaluation data. A change of content changes exactly the
fingerprint file that covers it; an unchanged folder is recognised without re-reading it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from sdd.model.source import fingerprint

from conftest import REPO, save_tiny


def test_local_model_folder_fingerprint_follows_its_content(tmp_path):
    model = save_tiny(tmp_path / "model", num_layers=4)
    scratch = tmp_path / "scratch"
    first = fingerprint(str(model), None, scratch)
    assert first["kind"] == "local" and {f["path"] for f in first["files"]} >= {"config.json", "model.safetensors"}
    assert fingerprint(str(model), None, scratch) == first  # unchanged: same fingerprint

    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # weights rewritten in place, same size
    weights.write_bytes(bytes(data))
    changed = fingerprint(str(model), None, scratch)
    assert changed["sha256"] != first["sha256"]
    by_path = {f["path"]: f["sha256"] for f in changed["files"]}
    assert by_path["config.json"] == {f["path"]: f["sha256"] for f in first["files"]}["config.json"]

    # A file whose size and mtime are unchanged is taken from the stat cache unread (as DVC does).
    stat = weights.stat()
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(str(model), None, scratch)["sha256"] == changed["sha256"]
    assert fingerprint(str(model), None)["sha256"] == first["sha256"]  # without the stat cache: the real bytes


def test_a_teammates_copy_of_a_local_model_has_the_same_fingerprint(tmp_path):
    """Same bytes, other timestamps, other folder and machine cache: the tracked file is the same."""
    model = save_tiny(tmp_path / "model", num_layers=4)
    ours = fingerprint(str(model), None, tmp_path / "scratch")
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(model, copy)  # copytree keeps mtimes: move them on
    for path in copy.iterdir():
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    theirs = fingerprint(str(copy), None, tmp_path / "their-scratch")
    assert json.dumps(theirs, sort_keys=True) == json.dumps(ours, sort_keys=True)
    assert "mtime" not in json.dumps(ours)


def run_stage(cwd: Path, module: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SDD_DATA_MIRROR": ""}
    proc = subprocess.run([sys.executable, "-m", module], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sources_change_only_for_the_input_whose_file_changed(tmp_path, mirror):
    local = tmp_path / "mirror"
    for folder in (
        "allenai/ai2_arc",
        "allenai/winogrande",
        "openai/gsm8k",
        "mosaicml/dolly_hhrlhf",
        "tatsu-lab/alpaca",
    ):
        shutil.copytree(mirror / folder, local / folder)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data_mirror"] = str(local)
    params["evaluate"]["tasks"] = {"arc_challenge": {"shots": 25, "limit": 2}, "winogrande": {"shots": 5, "limit": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(tmp_path, "stages.sources")
    out = tmp_path / "data/sources/eval.inputs.json"
    before = json.loads(out.read_text())
    datasets = json.loads((tmp_path / "data/sources/datasets.inputs.json").read_text())
    model = (tmp_path / "data/sources/model.base.json").read_bytes()
    assert set(before["tasks"]) == {"arc_challenge", "winogrande"}
    assert set(before["fidelity_prompts"]) == set(params["evaluate"]["fidelity"]["prompts"])
    assert str(local) not in out.read_text()  # paths relative to the mirror: no machine-local path

    with (local / "allenai/winogrande/winogrande_xl/validation.jsonl").open("a") as fh:
        fh.write(json.dumps({"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "1"}) + "\n")
    run_stage(tmp_path, "stages.sources")
    after = json.loads(out.read_text())
    assert after["tasks"]["winogrande"] != before["tasks"]["winogrande"]
    assert after["tasks"]["arc_challenge"] == before["tasks"]["arc_challenge"]
    assert after["fidelity_prompts"] == before["fidelity_prompts"]
    assert json.loads((tmp_path / "data/sources/datasets.inputs.json").read_text()) == datasets
    assert (tmp_path / "data/sources/model.base.json").read_bytes() == model

    with (local / "tatsu-lab/alpaca/default/train.jsonl").open("a") as fh:  # a dataset's file changed
        fh.write(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."}) + "\n")
    run_stage(tmp_path, "stages.sources")
    changed = json.loads((tmp_path / "data/sources/datasets.inputs.json").read_text())
    assert changed["alpaca"] != datasets["alpaca"] and changed["gsm8k"] == datasets["gsm8k"]
    assert json.loads(out.read_text()) == after
