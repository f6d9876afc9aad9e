"""Presets: each one gives valid params, and `dvc exp run --dry` with its flags runs exactly the
stages the preset is meant to run (nothing downloaded, nothing computed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdd.config.params import Params
from sdd.presets import apply_preset, flags, load_preset

from conftest import REPO, copy_repo, run_dvc

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def preset(name: str) -> dict:
    return load_preset(REPO / "presets" / name)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "presets").glob("*.yaml")))
def test_every_preset_gives_valid_params(name):
    Params.model_validate(apply_preset(PARAMS, preset(name)))


def test_flags_add_new_keys_and_delete_listed_ones():
    out = flags(
        {"_delete": ["finetune.arms.kd"], "finetune": {"arms": {"sft2": {"seed": 1}}, "epochs": 2}}, params=PARAMS
    )
    assert out == ["-S", "~finetune.arms.kd", "-S", "+finetune.arms.sft2.seed=1", "-S", "finetune.epochs=2"]
    with pytest.raises(ValueError, match="not in params.yaml"):
        apply_preset(PARAMS, {"_delete": ["finetune.arms.nope"]})


def test_an_invalid_preset_fails_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "finetune:\n  arms:\n    kd2: {data: {gsm8k: original}, objective: kd}\nteacher_logits: {original: []}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "sdd.presets", str(bad)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "add 'gsm8k' to teacher_logits.original" in proc.stderr


def placeholders(repo: Path) -> None:
    """An empty file or folder for every stage output: `dvc repro --dry` hashes each stage's deps, so on
    a fresh clone it stops at the first input another stage writes (it computes nothing either way)."""
    code = (
        "from pathlib import Path; from dvc.repo import Repo\n"
        "for o in (o for s in Repo('.').index.stages for o in s.outs):\n"
        "    p = Path(o.fs_path)\n"
        "    if not p.exists():\n"
        "        (p.parent if p.suffix else p).mkdir(parents=True, exist_ok=True)\n"
        "        (p if p.suffix else p / 'placeholder').write_text('')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=repo, check=True)


def dry_repo(tmp_path: Path) -> Path:
    repo = copy_repo(tmp_path / "repo")
    tracked = subprocess.run(["git", "ls-files", "data"], cwd=REPO, check=True, capture_output=True, text=True)
    for rel in tracked.stdout.split():  # the committed files under data/ (source fingerprints, folder markers)
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes((REPO / rel).read_bytes())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=repo, check=True)
    return repo


def dry_stages(repo: Path, name: str) -> tuple[set[str], str]:
    """The stages `dvc repro --dry` would run with the preset applied (outputs as placeholders)."""
    (repo / "params.yaml").write_text(yaml.safe_dump(apply_preset(PARAMS, preset(name)), sort_keys=False))
    placeholders(repo)
    out = run_dvc(repo, "repro", "--dry", env={"SDD_DATA_MIRROR": ""}).stdout
    return set(re.findall(r"Running stage '([^']+)'", out)), out


def preset_flags(repo: Path, name: str) -> list[str]:
    """`python -m sdd.presets presets/<name>`'s flags, as a user passes them to `dvc exp run`."""
    cmd = [sys.executable, "-m", "sdd.presets", f"presets/{name}"]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout.split()


def accepted_by_dvc(repo: Path, args: list[str]) -> None:
    """DVC accepts every flag (+ new keys, ~ deletions) and starts the experiment's first stages."""
    first = run_dvc(repo, "exp", "run", "--dry", *args, env={"SDD_DATA_MIRROR": ""}, check=False)
    assert "Running stage 'prepare@gsm8k'" in first.stdout, first.stdout + first.stderr


def test_study_preset_flags_run_in_dvc_and_its_dry_run_lists_the_study_stages(tmp_path):
    repo = dry_repo(tmp_path)
    args = preset_flags(repo, "smollm2-study.yaml")
    accepted_by_dvc(repo, args)
    assert (repo / "params.yaml").read_text() == (REPO / "params.yaml").read_text()  # a dry run changes nothing
    stages, _ = dry_stages(repo, "smollm2-study.yaml")
    arms = {"sft", "sft_seed1", "sdd", "sdd_seed1", "sdd_gsm8k", "sdd_alpaca"}
    assert {f"finetune@{a}" for a in arms} <= stages and {f"evaluate_arm@{a}" for a in arms} <= stages
    assert {"evaluate@base", "evaluate@pruned", "evaluate_merged@sdd_merged", "speculate_merged@sdd_merged"} <= stages
    assert {"distill@gsm8k", "distill@alpaca", "merge@sdd_merged", "report", "publish"} <= stages
    assert not {s for s in stages if s.startswith("teacher_logits") or s.endswith(("@kd_sdd", "@sdd_wise"))}


def test_an_arm_the_base_preset_deletes_can_be_defined_anew(tmp_path):
    """The search preset deletes `sdd`, the recipe preset defines an `sdd` of its own: its keys are
    new once the deletion has run, so their flags add them (`+`), and DVC accepts the lot."""
    repo = dry_repo(tmp_path)
    args = preset_flags(repo, "smollm2-recipe.yaml")
    assert "~finetune.arms.sdd" in args and "+finetune.arms.sdd.data.gsm8k=distilled" in args
    accepted_by_dvc(repo, args)
    stages, _ = dry_stages(repo, "smollm2-recipe.yaml")
    for arm in ("search", "sdd_seed2", "kd_seed1"):
        assert f"finetune@{arm}" in stages and f"evaluate_arm@{arm}" in stages
    assert {"teacher_logits@gsm8k", "teacher_logits@alpaca"} <= stages
    assert not {s for s in stages if s.startswith(("teacher_logits_distilled", "merge"))}


def test_paper_preset_runs_every_stage_under_its_launch_prefixes(tmp_path):
    repo = dry_repo(tmp_path)
    # --run passes values with spaces (the launch prefixes) to dvc as single arguments
    proc = subprocess.run(
        [sys.executable, "-m", "sdd.presets", "presets/llama31-8b-paper.yaml", "--run", "--dry"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "SDD_DATA_MIRROR": ""},
    )
    assert "Running stage 'sources'" in proc.stdout, proc.stdout + proc.stderr
    stages, out = dry_stages(repo, "llama31-8b-paper.yaml")
    listed = run_dvc(repo, "stage", "list", "--name-only").stdout.split()
    assert stages == set(listed) and "distill@openmath" in stages and "teacher_logits_distilled@dolly" in stages
    assert "> srun --partition=gpu --nodes=1 --gres=gpu:8 --time=48:00:00 -- python -m stages.finetune sdd" in out
    assert "> python -m stages.report" in out  # cheap stages run where dvc runs


def test_a_preset_on_another_applies_the_base_first_then_its_own_keys(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "_delete: [finetune.arms.sdd]\nfinetune:\n  learning_rate: 2.0e-4\n  arms:\n    a: {data: {gsm8k: original}}\n"
    )
    (tmp_path / "top.yaml").write_text(
        "_on: base.yaml\n_delete: [merge.recipes.sdd_wise]\nfinetune:\n  learning_rate: 6.0e-5\n"
        "  arms:\n    a_seed1: {data: {gsm8k: original}, seed: 1}\n"
    )
    merged = load_preset(tmp_path / "top.yaml")
    assert merged["_delete"] == ["finetune.arms.sdd", "merge.recipes.sdd_wise"]
    assert merged["finetune"]["learning_rate"] == 6.0e-5 and set(merged["finetune"]["arms"]) == {"a", "a_seed1"}
    (tmp_path / "loop.yaml").write_text("_on: loop.yaml\n")
    with pytest.raises(ValueError, match="makes a cycle"):
        load_preset(tmp_path / "loop.yaml")
