"""`dvc repro` in a temporary copy of the repository: runs, caches, reruns only what changed."""

import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from conftest import PIPELINE_ENV, copy_repo, dag_model, run_dvc, small_dag_params

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
    # sources always runs (it hashes the bytes); nothing downstream recomputes.
    assert ran(second.stdout) <= {"sources"}

    params["datasets"]["alpaca"]["limit"] = 16
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run_dvc(repo, "repro", *targets, env=env)
    assert ran(third.stdout) - {"sources"} == {"prepare@alpaca"}
    assert len(pd.read_parquet(repo / "data/prepared/alpaca.parquet")) == 16


def test_whole_dag_runs_to_the_report_and_then_has_nothing_to_do(tmp_path, mirror):
    """Every stage of dvc.yaml on a tiny random model (hf generation, 2 training steps, 2 items per
    task), through the report; a second `dvc repro` recomputes nothing."""
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    local_mirror = tmp_path / "mirror"  # a copy of what this run reads, so a test can change a file
    for folder in (
        "allenai/ai2_arc",
        "allenai/winogrande",
        "openai/gsm8k",
        "tatsu-lab/alpaca",
        "mosaicml/dolly_hhrlhf",
    ):
        shutil.copytree(mirror / folder, local_mirror / folder)
    small_dag_params(params, dag_model(tmp_path / "tiny"), local_mirror)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)  # dvclive reads the git HEAD: not an empty repo
    subprocess.run(git + ["commit", "-qm", "init"], cwd=repo, check=True)
    trace = tmp_path / "keys"
    env = {**PIPELINE_ENV, "SDD_PARAMS_TRACE": str(trace)}

    first = run_dvc(repo, "repro", env=env)
    stages = set(re.findall(r"(?m)^(\S+?)\s", run_dvc(repo, "stage", "list", "--name-only", env=env).stdout))
    assert ran(first.stdout) == stages, f"stages that did not run: {stages - ran(first.stdout)}"
    evaluated = ["base", "pruned", *params["finetune"]["arms"], *params["merge"]["recipes"]]
    report = (repo / "reports/recovery.md").read_text()
    for model in evaluated:
        assert f"| `{model}` |" in report, f"no row for {model} in the report"
    headline = yaml.safe_load((repo / "metrics/report/report.headline.json").read_text())
    assert set(evaluated) - {"base"} <= set(headline) and "sdd-sft" in headline
    assert {"recovery", "kl", "gold_nll"} <= set(headline["sdd"])
    # Every model folder carries the card its own stage wrote; publish adds the evaluation results.
    for folder in ("pruned", "finetuned/sft", "finetuned/kd_sdd", "merged/sdd_wise"):
        card = (repo / "data/models" / folder / "README.md").read_text()
        assert card.startswith("---\n") and "pipeline_tag: text-generation" in card and "## How it was made" in card
    assert "Pruned: decoder layers" in (repo / "data/models/finetuned/sft/README.md").read_text()  # the lineage
    assert "logit distillation" in (repo / "data/models/finetuned/kd_sdd/README.md").read_text()
    published = (repo / "reports/cards/sdd.md").read_text()
    assert "model-index:" in published and "num_few_shot: 0" in published and "## Evaluation" in published

    # Every params key a stage read (recorded by sdd.config.trace) is one dvc.yaml declares for it.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for keys_file in sorted(trace.glob("*.keys")):
        stage = keys_file.stem
        declared = set(lock[stage].get("params", {}).get("params.yaml", {}))
        read = set(keys_file.read_text().split())
        missing = sorted(k for k in read if not any(k == d or k.startswith(d + ".") for d in declared))
        assert not missing, f"{stage} reads params {missing} that dvc.yaml does not list for it"
    assert {f.stem for f in trace.glob("*.keys")} == stages

    always = {"sources"}  # it hashes the outside inputs
    second = run_dvc(repo, "repro", env=env)
    assert ran(second.stdout) <= always, second.stdout

    # An evaluation file of the mirror changed in place: exactly the evaluations (and the report) rerun.
    with next((local_mirror / "allenai/winogrande").rglob("*.jsonl")).open("a") as fh:
        fh.write(json.dumps({"sentence": "A _ test.", "option1": "a", "option2": "b", "answer": "1"}) + "\n")
    third = run_dvc(repo, "repro", env=env)
    evaluations = {s for s in stages if s.startswith("evaluate")}
    # fidelity_reference reads the same fingerprint file (its prompt sources and the plain-text rows
    # of the measures are in it): it reruns and writes identical continuations.
    assert ran(third.stdout) - always == evaluations | {"report", "fidelity_reference", "publish"}, third.stdout
