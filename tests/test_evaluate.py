"""evaluate@<model> and report end to end on tiny random Llamas and a small local mirror the test
writes (all six tasks, hub schema); fidelity metrics on identical and perturbed models."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from sdd.artifacts import to_frame
from sdd.eval.fidelity import compare, pad_id, reference_sequences, reference_table, render_prompts, stored_batches
from sdd.eval.per_prompt import FIDELITY_PER_PROMPT

from conftest import REPO, build_llama, build_tokenizer, copy_repo, interrupt, interruptible, run_dvc, save_tiny

ROWS = {
    "allenai/ai2_arc/ARC-Challenge/test.jsonl": [
        {
            "id": f"t{i}",
            "question": f"Which number is {i}?",
            "choices": {"text": ["one", "two", "three", "four"], "label": ["A", "B", "C", "D"]},
            "answerKey": "ABCD"[i % 4],
        }
        for i in range(3)
    ],
    "allenai/ai2_arc/ARC-Challenge/validation.jsonl": [
        {
            "id": "v0",
            "question": "What is 2?",
            "choices": {"text": ["two", "six", "ten"], "label": ["1", "2", "3"]},
            "answerKey": "1",
        }
    ],
    "Rowan/hellaswag/default/validation.jsonl": [
        {
            "ind": i,
            "activity_label": "Sea",
            "ctx_a": f"The fox jumps {i} times.",
            "ctx_b": "",
            "ctx": "",
            "endings": ["over the dog.", "into the sea.", "and stops.", "twice."],
            "label": str(i % 4),
        }
        for i in range(3)
    ],
    "cais/mmlu/all/test.jsonl": [
        {"question": f"Q{s}{i}?", "subject": s, "choices": ["0", "1", "2", "3"], "answer": i % 4}
        for s in ("anatomy", "astronomy")
        for i in range(3)
    ],
    "cais/mmlu/all/dev.jsonl": [
        {"question": f"D{s}?", "subject": s, "choices": ["0", "1", "2", "3"], "answer": 1}
        for s in ("anatomy", "astronomy")
    ],
    "truthfulqa/truthful_qa/multiple_choice/validation.jsonl": [
        {
            "question": f"Is the sea {i}?",
            "mc1_targets": {"choices": ["yes", "no"], "labels": [1, 0]},
            "mc2_targets": {"choices": ["yes", "maybe", "no"], "labels": [1, 1, 0]},
        }
        for i in range(3)
    ],
    "allenai/winogrande/winogrande_xl/validation.jsonl": [
        {"sentence": f"The fox saw the dog {i} so _ ran.", "option1": "fox", "option2": "dog", "answer": "12"[i % 2]}
        for i in range(3)
    ],
    "allenai/winogrande/winogrande_xl/train.jsonl": [
        {"sentence": "The sea is big so _ is wet.", "option1": "sea", "option2": "fox", "answer": "1"}
    ],
    "openai/gsm8k/main/test.jsonl": [
        {"question": f"Natalia sold {i} clips. How many?", "answer": f"She sold {i}.\n#### {i}"} for i in range(4)
    ],
    "openai/gsm8k/main/train.jsonl": [{"question": "How many clips is 72?", "answer": "It is 72.\n#### 72"}],
}

LIMIT = 2


def write_mirror(root: Path) -> Path:
    """The mirror the tasks read, and the prepared datasets whose validation rows the gold NLL scores."""
    for rel, rows in ROWS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
    from sdd.artifacts import write_parquet
    from sdd.data.schemas import PREPARED

    for ds in ("gsm8k", "alpaca"):
        row = {"dataset": ds, "context": "", "answer": None}
        ids = [hashlib.sha256(f"{ds}{i}".encode()).hexdigest()[:16] for i in range(12)]
        rows = [{**row, "id": ids[i], "instruction": f"Count to {i}.", "response": f"{i}."} for i in range(12)]
        write_parquet(to_frame(rows, PREPARED), root.parent / "data" / "prepared" / f"{ds}.parquet", PREPARED)
    return root


def params(models: dict, compare: list) -> dict:
    """The repository's params.yaml (other sections stay valid) with tiny evaluate/report sections."""
    one = {"shots": 1, "limit": LIMIT}
    repo = yaml.safe_load((REPO / "params.yaml").read_text())
    return {
        **repo,
        "evaluate": {
            "models": models,
            # every arm and merge is evaluated by default: here only `models` are
            "skip": [*repo["finetune"]["arms"], *repo["merge"]["recipes"]],
            "tasks": {
                "arc_challenge": one,
                "hellaswag": one,
                "mmlu": {**one, "subjects": ["anatomy", "astronomy"]},
                "truthfulqa_mc2": {"shots": 0, "limit": LIMIT},
                "winogrande": one,
                "gsm8k": one,
            },
            "batch_size": 4,
            "dtype": "float32",
            "fidelity": {
                "prompts": {
                    "gsm8k_test": {
                        "source": "openai/gsm8k",
                        "config": "main",
                        "split": "test",
                        "format": "gsm8k",
                        "limit": 3,
                    }
                },
                "max_new_tokens": 8,
                "batch_size": 2,
            },
            "measures": {"plain_tasks": ["hellaswag", "winogrande"], "plain_rows": 1, "max_tokens": 64},
        },
        "report": {"baseline": "base", "start": "pruned" if "pruned" in models else "base", "compare": compare}
        | {"bootstrap": 200},
    }


def stage_env(cwd: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SDD_DATA_MIRROR": str(cwd / "mirror"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cwd / "hf-cache"),
        # vLLM's CPU backend sizes the KV cache from the fraction of its NUMA node's memory, which
        # depends on the machine (10 GiB here left a negative budget at 0.05); a fixed 1 GiB does not.
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }


def run_stage(cwd: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=stage_env(cwd), capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stderr[-4000:]}"


@pytest.mark.slow
def test_evaluate_and_report_end_to_end(tmp_path):
    write_mirror(tmp_path / "mirror")
    save_tiny(tmp_path / "data/models/base", num_layers=6, seed=0)
    save_tiny(tmp_path / "data/models/pruned", num_layers=4, seed=0)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(params({"base": "base", "pruned": "pruned"}, [["pruned", "base"]]))
    )
    run_stage(tmp_path, "stages.fidelity_reference")
    run_stage(tmp_path, "stages.evaluate", "base")
    run_stage(tmp_path, "stages.evaluate", "pruned")

    base = json.loads((tmp_path / "metrics/evaluate/base.json").read_text())
    pruned = json.loads((tmp_path / "metrics/evaluate/pruned.json").read_text())
    settings = base["settings"]
    assert settings["backend"] == "hf" and settings["lm_eval_version"].startswith("0.4")
    assert settings["data"] == "mirror" and str(tmp_path) not in json.dumps(base)  # no machine-local path
    assert settings["seed"] == 0 and settings["dtype"] == "float32"
    assert set(base["tasks"]) == {"arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande", "gsm8k"}
    arc = base["tasks"]["arc_challenge"]
    assert (arc["shots"], arc["limit"], arc["n"], arc["metric"]) == (1, LIMIT, LIMIT, "acc_norm")
    assert arc["fewshot_split"] == "validation" and arc["fewshot_split_standard"] == "train"
    assert base["tasks"]["hellaswag"]["fewshot_split"] == "validation"
    assert base["tasks"]["mmlu"]["n"] == 2 * LIMIT and base["tasks"]["mmlu"]["subtasks"] == 2
    assert base["tasks"]["gsm8k"]["filter"] == "strict-match"
    assert "exact_match,flexible-extract" in base["tasks"]["gsm8k"]["lm_eval"]["gsm8k"]
    for name, task in base["tasks"].items():
        assert 0.0 <= task["score"] <= 1.0, name
        # our per-sample mean agrees with lm-eval's own aggregate (single-subtask tasks)
        if task["subtasks"] == 1:
            (own,) = task["lm_eval"].values()
            assert own[f"{task['metric']},{task['filter']}"] == pytest.approx(task["score"]), name
    assert base["average"] == pytest.approx(sum(t["score"] for t in base["tasks"].values()) / 6)
    assert base["fidelity"]["kl"] == 0.0 and base["fidelity"]["top1_agreement"] == 1.0
    assert pruned["fidelity"]["kl"] > 0.0 and pruned["fidelity"]["tokens"] > 0

    samples = pd.read_parquet(tmp_path / "data/eval/pruned.parquet")
    assert len(samples) == 5 * LIMIT + 2 * LIMIT
    assert set(samples["model"]) == {"pruned"}
    assert samples.loc[samples["task"] == "winogrande", "chance"].eq(0.5).all()

    # A hand-made prune.json and one speculate file: the table shows their columns.
    (tmp_path / "metrics/prune").mkdir(parents=True)
    (tmp_path / "metrics/prune/prune.json").write_text(
        json.dumps(
            {
                "removed_layers": [2, 3],
                "n_layers": 2,
                "start": 2,
                "parameters_before": 2e6,
                "parameters_after": 1.5e6,
                "flops_per_token_before": 4e6,
                "flops_per_token_after": 3e6,
                "flops_reduction_pct": 25.0,
                "params_reduction_pct": 25.0,
            }
        )
    )
    (tmp_path / "metrics/speculate").mkdir(parents=True)
    (tmp_path / "metrics/speculate/pruned.json").write_text(
        json.dumps({"acceptance_rate": 0.5, "mean_accepted_length": 2.0, "speedup": 1.3, "k": 4, "temperature": 0.0})
    )
    (tmp_path / "metrics/layer_scores").mkdir(parents=True)
    candidates = [
        {"start": 1, "kl": 0.9, "top1": 0.4, "angular_last_token": 0.1, "block_influence": 0.3},
        {"start": 2, "kl": 0.2, "top1": 0.8, "angular_last_token": 0.2, "block_influence": 0.1},
    ]
    (tmp_path / "metrics/layer_scores/scores.json").write_text(
        json.dumps(
            {
                "metric": "kl_to_base",
                "token": "last",
                "best_start": {"2": 2},
                "best_start_by_metric": {
                    "angular_last_token": {"1": 0, "2": 1},
                    "block_influence": {"1": 3, "2": 2},
                    "kl_to_base": {"2": 2},
                },
                "kl_to_base": {
                    "2": {
                        "candidates": candidates,
                        "best_start": 2,
                        "rank_correlation": {"angular_last_token": -1.0, "block_influence": 1.0},
                    }
                },
            }
        )
    )
    run_stage(tmp_path, "stages.report")
    table = (tmp_path / "reports/recovery.md").read_text()
    # which block each metric picks, its measured KL, and how well it ranks blocks by KL
    assert "## Layer selection (n = 2)" in table
    assert "| `angular_last_token` | 1–2 | 0.900 | 40.0% | -1.00 |" in table
    assert "| `kl_to_base` (used) | 2–3 | 0.200 | 80.0% | — |" in table
    # one row per non-baseline model at this depth (chance-normalised: NaN for a random base at chance)
    sweep = pd.read_csv(tmp_path / "reports/plots/sweep.csv")
    assert "recovery_chance_normalised" in sweep
    assert sweep.drop(columns="recovery_chance_normalised").to_dict("records") == [
        {
            "model": "pruned",
            "n_layers": 2,
            "start": 2,
            "flops_reduction_pct": 25.0,
            "params_reduction_pct": 25.0,
            "recovery": round(100 * pruned["average"] / base["average"], 2),
            "kl": round(pruned["fidelity"]["kl"], 4),
            "top1_agreement": round(100 * pruned["fidelity"]["top1_agreement"], 2),
        }
    ]
    assert "| `base` |" in table and "| `pruned` |" in table and "100.0%" in table
    assert "`pruned` − `base`" in table and "params (M)" in table and "draft acceptance" in table
    report = json.loads((tmp_path / "metrics/report/report.json").read_text())
    assert report["models"]["base"]["recovery"] == pytest.approx(1.0)
    # each model sized from its own config (recorded by evaluate@), not from prune.json
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(tmp_path / "data/models/pruned").num_parameters()
    assert report["models"]["pruned"]["parameters"] == real < report["models"]["base"]["parameters"]
    assert report["comparisons"]["pruned-base"]["paired_items"] == len(samples)
    plots = pd.read_csv(tmp_path / "reports/plots/tasks.csv")
    assert len(plots) == 2 * 6


def evaluate_workdir(root: Path) -> Path:
    write_mirror(root / "mirror")
    save_tiny(root / "data/models/base", num_layers=6, seed=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params({"base": "base"}, [])))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_evaluate_resumes_after_kill_with_the_tasks_it_finished(tmp_path, sig):
    """Kill (SIGKILL) or Ctrl-C (SIGINT) evaluate@base once some tasks are checkpointed: no output is
    left for a later stage, and the re-run reads those tasks back (untouched) and ends with the
    uninterrupted run's result."""
    reference = evaluate_workdir(tmp_path / "ref")
    run_stage(reference, "stages.fidelity_reference")
    run_stage(reference, "stages.evaluate", "base")
    work = evaluate_workdir(tmp_path / "killed")
    run_stage(work, "stages.fidelity_reference")
    checkpoints = work / ".sdd-scratch/evaluate/base"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.evaluate", "base"],
        cwd=work,
        env=stage_env(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **interruptible(),
    )
    interrupt(proc, lambda: len(list(checkpoints.glob("*/*.json"))) >= 2, sig)
    done = {p: p.stat().st_mtime_ns for p in checkpoints.glob("*/*.json")}
    assert 2 <= len(done) < 6
    assert not (work / "metrics/evaluate/base.json").exists() and not (work / "data/eval/base.parquet").exists()

    run_stage(work, "stages.evaluate", "base")
    metrics = json.loads((work / "metrics/evaluate/base.json").read_text())
    assert sorted(metrics["tasks_reused"]) == sorted(p.stem for p in done)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in done.items())  # read back, not redone
    expected = json.loads((reference / "metrics/evaluate/base.json").read_text())
    for task in (metrics["tasks"], expected["tasks"]):  # the mirror's path differs between the two runs
        for t in task.values():
            t.pop("source")
    assert metrics["tasks"] == expected["tasks"] and metrics["average"] == expected["average"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(work / "data/eval/base.parquet"), pd.read_parquet(reference / "data/eval/base.parquet")
    )

    # Another setting (here the batch size) is another key: nothing is read back, old files go.
    cfg = yaml.safe_load((work / "params.yaml").read_text())
    cfg["evaluate"]["batch_size"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(cfg))
    run_stage(work, "stages.evaluate", "base")
    assert json.loads((work / "metrics/evaluate/base.json").read_text())["tasks_reused"] == []
    assert not any(p.exists() for p in done) and len(list(checkpoints.glob("*/*.json"))) == 6


@pytest.mark.slow
def test_vllm_backend_runs_every_task_on_one_engine_and_resumes(tmp_path):
    work = evaluate_workdir(tmp_path)
    tok = build_tokenizer()
    model = build_llama(tok, num_layers=4, seed=0, hidden=128)  # head size 32: vLLM's CPU attention accepts it
    model.save_pretrained(work / "data/models/base", safe_serialization=True)
    tok.save_pretrained(work / "data/models/base")
    cfg = yaml.safe_load((work / "params.yaml").read_text())
    cfg["evaluate"] |= {
        "backend": "vllm",
        "vllm": {"gpu_memory_utilization": 0.05, "max_model_len": 512, "enforce_eager": True},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(cfg))
    run_stage(work, "stages.fidelity_reference")
    run_stage(work, "stages.evaluate", "base")
    first = json.loads((work / "metrics/evaluate/base.json").read_text())
    assert first["settings"]["backend"] == "vllm" and first["tasks_reused"] == []
    assert {t: v["n"] for t, v in first["tasks"].items()} == {
        "arc_challenge": LIMIT,
        "hellaswag": LIMIT,
        "mmlu": 2 * LIMIT,
        "truthfulqa_mc2": LIMIT,
        "winogrande": LIMIT,
        "gsm8k": LIMIT,
    }
    assert all(0.0 <= v["score"] <= 1.0 for v in first["tasks"].values())
    run_stage(work, "stages.evaluate", "base")  # every task checkpointed: no engine starts
    second = json.loads((work / "metrics/evaluate/base.json").read_text())
    assert sorted(second["tasks_reused"]) == sorted(first["tasks"]) and second["tasks"] == first["tasks"]


def test_fidelity_identical_is_zero_and_perturbed_is_positive(tokenizer):
    base = build_llama(tokenizer, num_layers=4, seed=0)
    twin = build_llama(tokenizer, num_layers=4, seed=0)
    perturbed = build_llama(tokenizer, num_layers=4, seed=0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = [
        {"instruction": "How many clips did Natalia sell?", "context": ""},
        {"instruction": "Write a short poem about the sea.", "context": "Give three tips."},
    ]
    batches = reference_sequences(base, tokenizer, render_prompts(tokenizer, rows), max_new_tokens=6, batch_size=2)
    same = compare(base, twin, batches)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 1.0
    assert same["perplexity"] == pytest.approx(same["reference_perplexity"])
    assert same["tokens"] > 0 and same["prompts"] == 2
    moved = compare(base, perturbed, batches)
    assert moved["kl"] > 1e-3 and moved["top1_agreement"] < 1.0
    # greedy text is the reference's argmax: its own perplexity is lower than the perturbed model's
    assert moved["perplexity"] > same["reference_perplexity"]
    # per prompt: the sums the token-weighted means are made of (what paired CIs resample)
    rows = moved["per_prompt"]
    assert len(rows) == 2 and sum(r["tokens"] for r in rows) == moved["tokens"]
    assert sum(r["kl_sum"] for r in rows) / moved["tokens"] == pytest.approx(moved["kl"])
    assert sum(r["top1_sum"] for r in rows) / moved["tokens"] == pytest.approx(moved["top1_agreement"])
    assert math.exp(sum(r["nll_sum"] for r in rows) / moved["tokens"]) == pytest.approx(moved["perplexity"])
    framed = to_frame(rows, FIDELITY_PER_PROMPT)
    assert FIDELITY_PER_PROMPT.validate(framed) is not None


def test_stored_continuations_rebuild_the_generated_batches_exactly(tokenizer, tmp_path):
    """fidelity_reference stores token ids once; the batches rebuilt from the Parquet are the
    generated ones, so every model's fidelity is the number direct generation gave."""
    from sdd.artifacts import read_parquet, to_frame, write_parquet
    from sdd.eval.fidelity import FIDELITY_REFERENCE

    base = build_llama(tokenizer, num_layers=4, seed=0)
    perturbed = build_llama(tokenizer, num_layers=4, seed=0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = [
        {"dataset": "a", "id": str(i), "instruction": q, "context": c}
        for i, (q, c) in enumerate(
            [("How many clips?", ""), ("Write a poem about the sea.", "Short."), ("Hi", ""), ("Add 2 and 3.", "")]
        )
    ]
    generated = reference_sequences(base, tokenizer, render_prompts(tokenizer, rows), max_new_tokens=7, batch_size=3)
    table = reference_table(base, tokenizer, rows, max_new_tokens=7, batch_size=3)
    path = tmp_path / "fidelity.reference.parquet"
    write_parquet(to_frame(table, FIDELITY_REFERENCE), path, FIDELITY_REFERENCE)
    stored = read_parquet(path, FIDELITY_REFERENCE, "fidelity_reference").to_dict("records")
    rebuilt = stored_batches(stored, pad_id(tokenizer), batch_size=3)
    assert [r["id"] for r in stored] == ["0", "1", "2", "3"] and {r["prompt_set"] for r in stored} == {"a"}
    for a, b in zip(generated, rebuilt, strict=True):
        assert a.prompt_width == b.prompt_width
        assert torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.continuation, b.continuation)
        assert torch.equal(a.input_ids[a.attention_mask.bool()], b.input_ids[b.attention_mask.bool()])
    assert compare(base, perturbed, rebuilt) == compare(base, perturbed, generated)


def test_sweep_plots_draw_one_point_per_experiment_and_model(tmp_path):
    """dvc.yaml's top-level sweep plots overlay each revision's reports/plots/sweep.csv."""
    repo = copy_repo(tmp_path / "repo")
    sweep = repo / "reports/plots/sweep.csv"
    sweep.parent.mkdir(parents=True)
    header = "model,n_layers,flops_reduction_pct,recovery,recovery_chance_normalised,kl\n"
    sweep.write_text(header + "sdd,6,13.0,90.0,50.0,1.2\nsft,6,13.0,85.0,40.0,1.5\n")
    subprocess.run("git add -A && git -c user.email=t@t -c user.name=t commit -qm n6", shell=True, cwd=repo, check=True)
    sweep.write_text(header + "sdd,8,17.0,80.0,30.0,2.2\nsft,8,17.0,75.0,20.0,2.5\n")

    plots = json.loads(run_dvc(repo, "plots", "diff", "HEAD", "--json", check=False).stdout)["data"]
    for name, field in [
        ("recovery_vs_flops", "recovery"),
        ("fidelity_vs_flops", "kl"),
        ("recovery_chance_normalised_vs_flops", "recovery_chance_normalised"),
    ]:
        (plot,) = plots[name]
        points = {
            (p["rev"], p["model"]): (float(p["flops_reduction_pct"]), float(p[field]))
            for p in plot["content"]["data"]["values"]
        }
        expected = {
            "recovery": [90.0, 85.0, 80.0, 75.0],
            "kl": [1.2, 1.5, 2.2, 2.5],
            "recovery_chance_normalised": [50.0, 40.0, 30.0, 20.0],
        }[field]
        assert points == {
            ("HEAD", "sdd"): (13.0, expected[0]),
            ("HEAD", "sft"): (13.0, expected[1]),
            ("workspace", "sdd"): (17.0, expected[2]),
            ("workspace", "sft"): (17.0, expected[3]),
        }
        assert plot["content"]["encoding"]["x"]["field"] == "flops_reduction_pct"


def _answered(db: Path, mode: str = "ro") -> int:
    """Requests lm-eval's cache holds (SqliteDict's table), 0 while the file is missing or busy. Read
    only while the stage runs; after a kill, "rw": a kill inside a commit leaves a hot journal, which
    only a writer rolls back (as the re-run does); a read-only reader gets an error instead."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode={mode}", uri=True, timeout=0.1) as con:
            return int(con.execute("SELECT count(*) FROM unnamed").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_task_killed_halfway_resumes_from_the_requests_it_had_answered(tmp_path):
    """MMLU's subjects are one checkpoint piece; killed inside it, the re-run answers the requests it
    had answered from lm-eval's request cache (in the piece's folder) and ends where an uninterrupted
    run does."""

    def workdir(root: Path) -> Path:
        evaluate_workdir(root)
        rows = [
            {"question": f"Q{i}: " + "why " * 30, "subject": "anatomy", "choices": ["a", "b", "c", "d"]}
            for i in range(100)
        ]
        (root / "mirror/cais/mmlu/all/test.jsonl").write_text(
            "".join(json.dumps({**r, "answer": i % 4}) + "\n" for i, r in enumerate(rows))
        )
        cfg = yaml.safe_load((root / "params.yaml").read_text())
        cfg["evaluate"]["tasks"] = {"mmlu": {"shots": 0, "limit": 100, "subjects": ["anatomy"]}}
        cfg["evaluate"]["measures"]["plain_tasks"] = []
        (root / "params.yaml").write_text(yaml.safe_dump(cfg))
        run_stage(root, "stages.fidelity_reference")
        return root

    reference = workdir(tmp_path / "ref")
    run_stage(reference, "stages.evaluate", "base")
    work = workdir(tmp_path / "killed")
    cmd = [sys.executable, "-m", "stages.evaluate", "base"]
    proc = subprocess.Popen(
        cmd, cwd=work, env=stage_env(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **interruptible()
    )
    dbs = lambda: list((work / ".sdd-scratch/evaluate/base").glob("*/mmlu.requests*.db"))  # noqa: E731
    interrupt(proc, lambda: any(_answered(db) >= 60 for db in dbs()))
    answered = max(_answered(db, "rw") for db in dbs())
    assert 60 <= answered < 400  # 100 items x 4 choices, killed inside the task
    rerun = subprocess.run(cmd, cwd=work, env=stage_env(work), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    cached, remaining = map(int, re.search(r"Cached requests: (\d+), Requests remaining: (\d+)", rerun.stderr).groups())
    assert cached >= answered and cached + remaining == 400
    assert not dbs()  # the finished piece holds every answer: the request cache is gone
    pd.testing.assert_frame_equal(
        pd.read_parquet(work / "data/eval/base.parquet"), pd.read_parquet(reference / "data/eval/base.parquet")
    )
