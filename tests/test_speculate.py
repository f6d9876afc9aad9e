"""Speculative decoding: vLLM counters -> acceptance metrics (pure), and the stage end to end on tiny
models in subprocesses: a target drafting for itself is accepted (almost) always, a different
random model much less, and the metrics JSON records k, temperature and the prompts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sdd.artifacts import to_frame, write_parquet
from sdd.data.schemas import PREPARED
from sdd.generate import speculation
from sdd.generate.speculation import SpecCounters

from conftest import REPO, build_llama, build_tokenizer, copy_repo, run_dvc


@dataclass
class Counter:  # the shape of vllm.v1.metrics.reader.Counter / Vector
    name: str
    value: int = 0
    values: tuple = ()


def test_counters_are_summed_over_engines_and_ignore_other_metrics():
    metrics = [
        Counter("vllm:spec_decode_num_drafts", 10),
        Counter("vllm:spec_decode_num_drafts", 5),
        Counter("vllm:spec_decode_num_draft_tokens", 60),
        Counter("vllm:spec_decode_num_accepted_tokens", 33),
        Counter("vllm:spec_decode_num_accepted_tokens_per_pos", values=(12, 9, 6, 3)),
        Counter("vllm:spec_decode_num_accepted_tokens_per_pos", values=(2, 1, 0, 0)),
        Counter("vllm:generation_tokens", 999),
    ]
    assert speculation.spec_counters(metrics) == SpecCounters(15, 60, 33, (14, 10, 6, 3))
    assert speculation.spec_counters([Counter("vllm:generation_tokens", 5)]) == SpecCounters()


def test_acceptance_metrics_follow_vllm_definitions():
    counts = SpecCounters(drafts=10, draft_tokens=40, accepted_tokens=22, accepted_per_pos=(9, 7, 4, 2))
    result = speculation.acceptance(counts, k=4)
    assert result["acceptance_rate"] == pytest.approx(22 / 40)
    assert result["mean_accepted_length"] == pytest.approx(1 + 22 / 10)  # accepted + the target's own token
    assert result["per_position_acceptance"] == pytest.approx([0.9, 0.7, 0.4, 0.2])
    perfect = speculation.acceptance(SpecCounters(5, 15, 15, (5, 5, 5)), k=3)
    assert perfect["acceptance_rate"] == 1.0 and perfect["mean_accepted_length"] == 4.0


def test_difference_of_counters_excludes_warm_up():
    after, before = SpecCounters(12, 48, 30, (10, 9, 7, 4)), SpecCounters(2, 8, 8, (2, 2, 2, 2))
    assert after - before == SpecCounters(10, 40, 22, (8, 7, 5, 2))


def test_no_speculative_steps_is_an_error():
    with pytest.raises(ValueError, match="no speculative steps"):
        speculation.acceptance(SpecCounters(), k=4)


def test_prompts_must_be_held_out_from_fine_tuning():
    rows = [{"id": f"{i:016x}", "instruction": f"q{i}"} for i in range(6)]
    held = ["0000000000000004", "0000000000000001"]
    assert [r["instruction"] for r in speculation.held_out_prompts(rows, held, 2, "gsm8k")] == ["q4", "q1"]
    with pytest.raises(ValueError, match="gsm8k has only 2 rows held out"):
        speculation.held_out_prompts(rows, held, 3, "gsm8k")


def test_workload_fingerprint_changes_with_prompts_and_settings():
    base = speculation.prompts_fingerprint([[1, 2, 3]], {"max_tokens": 16, "temperature": 0.0})
    assert base == speculation.prompts_fingerprint([[1, 2, 3]], {"temperature": 0.0, "max_tokens": 16})
    assert base != speculation.prompts_fingerprint([[1, 2, 4]], {"max_tokens": 16, "temperature": 0.0})
    assert base != speculation.prompts_fingerprint([[1, 2, 3]], {"max_tokens": 17, "temperature": 0.0})


# --- the stage, end to end (vLLM in subprocesses) ---------------------------------------------

QUESTIONS = [
    "How many clips did Natalia sell?",
    "Write a short poem about the sea.",
    "Give three tips for staying healthy.",
    "What is 48 + 24?",
    "The quick brown fox jumps over the lazy dog.",
    "How many clips in May?",
    "Name a colour of the sea.",
    "What is half of 48?",
]


def save_model(path: Path, seed: int) -> Path:
    tok = build_tokenizer()
    build_llama(tok, num_layers=4, seed=seed, hidden=256).save_pretrained(path)  # head_dim 64: vLLM CPU attention sizes
    tok.save_pretrained(path)
    return path


def run_stage(project: Path, *args: str) -> subprocess.CompletedProcess:
    # In-process engine (no EngineCore/worker processes): starts in about half the time here. Its
    # tokens/s is not representative (measured 13 vs 510 tok/s), which these tests do not assert on.
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    return subprocess.run(
        [sys.executable, "-m", "stages.speculate", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spec")
    models = root / "data" / "models"
    save_model(models / "base", seed=0)
    save_model(models / "other", seed=7)
    rows = [
        {
            "id": hashlib.sha256(q.encode()).hexdigest()[:16],
            "dataset": "gsm8k",
            "instruction": q,
            "context": "",
            "response": "The answer is 72.",
            "answer": "72",
        }
        for q in QUESTIONS
    ]
    write_parquet(to_frame(rows, PREPARED), root / "data" / "prepared" / "gsm8k.parquet", PREPARED)
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # the real file: other sections stay valid
    params["paths"] = {"models": "data/models", "prepared": "data/prepared", "metrics": "metrics"}
    params.setdefault("finetune", {})["val_fraction"] = 0.25  # 2 of 8 rows held out
    params["speculate"] = {
        "target": "base",
        "drafts": {"itself": "base", "random": "other"},
        "num_speculative_tokens": 3,
        "temperature": 0.0,
        "prompts": {"datasets": ["gsm8k"], "per_dataset": 2, "max_tokens": 24},
        "engine_args": {
            "dtype": "float32",
            "max_model_len": 256,
            "gpu_memory_utilization": 0.05,
            "enforce_eager": True,
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def measured(project) -> dict[str, dict]:
    results = {}
    for args in (["--baseline"], ["itself"], ["random"]):
        proc = run_stage(project, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    results["base"] = json.loads((project / "metrics" / "speculate_base" / "speculate_base.json").read_text())
    for draft in ("itself", "random"):
        results[draft] = json.loads((project / "metrics" / "speculate" / f"{draft}.json").read_text())
    return results


@pytest.mark.slow
def test_target_drafting_for_itself_is_accepted(measured):
    itself = measured["itself"]
    assert itself["acceptance_rate"] > 0.95
    assert itself["mean_accepted_length"] > 3.8  # k=3: up to 3 accepted + 1 own token per step
    assert itself["per_position_acceptance"][-1] > 0.9


@pytest.mark.slow
def test_a_different_random_draft_is_accepted_less(measured):
    assert measured["random"]["acceptance_rate"] < measured["itself"]["acceptance_rate"] - 0.3
    pos = measured["random"]["per_position_acceptance"]
    assert all(a >= b for a, b in zip(pos, pos[1:]))  # position i+1 is accepted only after position i


@pytest.mark.slow
def test_metrics_record_k_temperature_and_prompts(measured):
    base = measured["base"]
    for name in ("itself", "random"):
        m = measured[name]
        assert m["k"] == 3 and len(m["per_position_acceptance"]) == 3
        assert m["temperature"] == 0.0 and m["num_prompts"] == 2 and m["max_tokens"] == 24
        assert m["prompt_ids"] == base["prompt_ids"] and m["workload"] == base["workload"]
        assert m["tokens_per_s_base"] == base["tokens_per_s"]
        assert m["speedup"] == pytest.approx(m["tokens_per_s_spec"] / m["tokens_per_s_base"])
        assert 0 <= m["num_accepted_tokens"] <= m["num_draft_tokens"] == 3 * m["num_drafts"] > 0


@pytest.mark.slow
def test_stage_refuses_an_unknown_draft_and_a_stale_baseline(project, measured):
    proc = run_stage(project, "randon")
    assert proc.returncode == 2 and "did you mean 'random'" in proc.stderr
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["speculate"]["prompts"]["max_tokens"] = 25
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_stage(project, "itself")
    assert proc.returncode == 2 and "dvc repro speculate_base" in proc.stderr


def test_dvc_declares_a_stage_per_draft_and_per_merge_recipe(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    listed = run_dvc(repo, "stage", "list").stdout
    assert "speculate_base " in listed
    for draft in params["speculate"]["drafts"]:
        assert f"speculate@{draft} " in listed
    # Every arm and merge recipe is evaluated and used as a draft under its own name, listed nowhere else.
    for arm in params["finetune"]["arms"]:
        assert f"evaluate_arm@{arm} " in listed and f"speculate_arm@{arm} " in listed
    for recipe in params["merge"]["recipes"]:
        assert f"merge@{recipe} " in listed and f"evaluate_merged@{recipe} " in listed
        assert f"speculate_merged@{recipe} " in listed
