"""One edit per new thing: an arm, a merge, a dataset or a task added to params.yaml alone makes
`dvc repro --dry` list exactly the stages that thing needs, on a repository where all else is done.

A new dataset is the one over-approximation: the stages that read prepared rows declare the whole
prepared folder as a dep (an arm's datasets are a map, which dvc.yaml cannot template into deps), so
its new file lists them too, and a `dvc repro` reruns them although the rows they read are unchanged."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from test_presets import dry_repo, placeholders

from sdd.config.params import Params

from conftest import REPO, run_dvc

ENV = {"SDD_DATA_MIRROR": ""}
ALWAYS = {"sources"}  # always_changed: it hashes the outside inputs on every repro
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
BASELINE = copy.deepcopy(PARAMS)
del BASELINE["evaluate"]["tasks"]["winogrande"]  # the task the task edit adds back


def dry(repo: Path) -> set[str]:
    """The stages whose own deps or params changed (the dry run does not list what would follow
    from their new outputs: report after a new evaluation, say)."""
    placeholders(repo)  # outputs of any new stage: `dvc repro --dry` hashes every dep
    out = run_dvc(repo, "repro", "--dry", env=ENV).stdout
    return set(re.findall(r"Running stage '([^']+)'", out)) - ALWAYS


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A copy of the repository whose every stage output is in place and recorded in dvc.lock."""
    repo = dry_repo(tmp_path_factory.mktemp("one_edit"))
    (repo / "params.yaml").write_text(yaml.safe_dump(BASELINE, sort_keys=False))
    placeholders(repo)
    run_dvc(repo, "commit", "--force", env=ENV)
    assert dry(repo) == set(), "the baseline has work left"
    return repo


def new_arm(p: dict) -> None:
    p["finetune"]["arms"]["sdd_seed1"] = {**p["finetune"]["arms"]["sdd"], "seed": 1}


def new_merge(p: dict) -> None:
    p["merge"]["recipes"]["sft_wise"] = {"method": "slerp", "models": ["pruned", "finetuned/sft"], "t": 0.5}


def new_dataset(p: dict) -> None:
    p["datasets"]["dolly"] = {
        "source": "mosaicml/dolly_hhrlhf",
        "config": "default",
        "split": "train",
        "revision": "main",
        "format": "dolly_hhrlhf",
        "limit": 32,
        "seed": 0,
    }


def new_task(p: dict) -> None:
    p["evaluate"]["tasks"]["winogrande"] = PARAMS["evaluate"]["tasks"]["winogrande"]


FOLDER_READERS: set[str] = set()  # see the module docstring
EVALUATIONS = {
    "evaluate@base",
    "evaluate@pruned",
    *(f"evaluate_arm@{a}" for a in PARAMS["finetune"]["arms"]),
    *(f"evaluate_merged@{r}" for r in PARAMS["merge"]["recipes"]),
}


@pytest.mark.parametrize(
    "change, stages",
    [
        (new_arm, {"finetune@sdd_seed1", "evaluate_arm@sdd_seed1", "speculate_arm@sdd_seed1", "report", "publish"}),
        (new_merge, {"merge@sft_wise", "evaluate_merged@sft_wise", "speculate_merged@sft_wise", "report", "publish"}),
        (new_dataset, FOLDER_READERS),
        # fidelity_reference: the plain-text rows of the measures are task rows no evaluation uses
        (new_task, EVALUATIONS | {"fidelity_reference"}),
    ],
    ids=["arm", "merge", "dataset", "task"],
)
def test_one_edit_runs_exactly_the_new_stages(done: Path, change: Callable[[dict], None], stages: set[str]):
    params = copy.deepcopy(BASELINE)
    change(params)
    Params.model_validate(params)  # the one edit is valid params on its own
    (done / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if stages is FOLDER_READERS:
        lock = yaml.safe_load((done / "dvc.lock").read_text())["stages"]
        prepared = PARAMS["paths"]["prepared"]
        stages = {"prepare@dolly"} | {n for n, s in lock.items() if any(d["path"] == prepared for d in s["deps"])}
        assert {"finetune@sdd", "layer_scores"} <= stages  # what the over-approximation costs
    before = set(done.rglob("*"))
    try:
        assert dry(done) == stages
    finally:  # back to the baseline: its params, and none of the new stages' placeholder outputs
        (done / "params.yaml").write_text(yaml.safe_dump(BASELINE, sort_keys=False))
        for path in sorted(set(done.rglob("*")) - before, reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
