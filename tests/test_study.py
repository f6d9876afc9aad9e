"""The study report's pieces: stage times from logs, recovery and KL intervals, and the SVG figures
(a drawn mark for every model)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from sdd import study
from sdd.artifacts import read_json
from sdd.plots import to_svg


def test_stage_seconds_come_from_the_stage_logs_and_the_last_run_wins():
    first = "2026-11-30 18:48:14,542 sdd INFO distill@gsm8k done: rows=640, kept=0.28, seconds=373.71\nnoise\n"
    second = "2026-11-30 19:48:14,542 sdd INFO distill@gsm8k done: rows=640, seconds=12.5\n" + (
        "2026-11-30 19:49:00,000 sdd INFO report done: models=7, seconds=3.0\n"
    )
    assert study.stage_seconds([first, second]) == {"distill@gsm8k": 12.5, "report": 3.0}


def test_recovery_ci_is_the_ratio_of_task_means_with_a_paired_interval():
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"task": "arc", "subtask": "arc", "doc_id": range(400), "score": (rng.random(400) < 0.5) * 1.0})
    same = base.copy()
    value, low, high = study.recovery_ci(same, base, ["arc"], 500, 0)
    assert value == 1.0 and low == pytest.approx(1.0) and high == pytest.approx(1.0)  # paired: no spread at all
    worse = base.assign(score=base["score"] * (rng.random(400) < 0.8))
    value, low, high = study.recovery_ci(worse, base, ["arc"], 500, 0)
    assert value == pytest.approx(worse["score"].mean() / base["score"].mean()) and low < value < high < 1.0


def test_kl_ci_and_the_interval_chart_draw_every_model():
    frame = pd.DataFrame({"kl_sum": [1.0, 2.0, 3.0, 4.0], "tokens": [10, 10, 10, 10]})
    kl, low, high = study.kl_ci(frame, 500, 0)
    assert kl == pytest.approx(0.25) and 0.1 <= low <= kl <= high <= 0.4
    rows = [
        {"model": m, "kl": v, "low": v - 0.01, "high": v + 0.01}
        for m, v in (("pruned", 1.1), ("sft", 0.9), ("sdd", 0.8))
    ]
    svg = to_svg(study.interval_chart(rows, "kl", "KL"))
    assert len(re.findall(r'aria-roledescription="point"', svg)) == 3
    assert all(f">{m}<" in svg for m in ("pruned", "sft", "sdd"))


def _run_tree(root, scores: dict[str, np.ndarray], kl: dict[str, float], params) -> None:
    """A run's evaluation outputs as the study report reads them: per-item samples, per-prompt
    fidelity and the report's per-model summary."""
    from sdd.artifacts import to_frame, write_json, write_parquet
    from sdd.data.schemas import EVAL_SAMPLES
    from sdd.eval.per_prompt import FIDELITY_PER_PROMPT, per_prompt_file

    paths, n = params.paths, len(next(iter(scores.values())))
    for m, s in scores.items():
        rows = pd.DataFrame({"model": m, "task": "arc_challenge", "subtask": "arc_challenge", "doc_id": range(n)})
        rows = rows.assign(doc_hash="h", score=s, chance=0.25, target="0", prediction="0")
        write_parquet(to_frame(rows.to_dict("records"), EVAL_SAMPLES), root / paths.eval_samples_file(m), EVAL_SAMPLES)
        fid = pd.DataFrame({"prompt_set": "p", "id": [f"q{i}" for i in range(40)], "tokens": 10})
        fid = fid.assign(kl_sum=kl[m] * 10 * np.linspace(0.5, 1.5, 40), top1_sum=5.0, nll_sum=20.0, ref_nll_sum=20.0)
        write_parquet(fid, per_prompt_file(root / paths.eval, m), FIDELITY_PER_PROMPT)
    models = {m: {"average": s.mean(), "average_above_chance": s.mean()} for m, s in scores.items()}
    write_json(root / paths.metrics_file("report"), {"models": models, "above_chance_tasks": ["arc_challenge"]})


def test_across_runs_pairs_each_model_with_itself_in_the_earlier_run(tmp_path, monkeypatch):
    from sdd.config import load_params

    from conftest import REPO

    params = load_params(REPO / "params.yaml")
    arms = {**params.finetune.arms, "sdd_seed1": params.finetune.arms["sdd"].model_copy(update={"seed": 1})}
    params = params.model_copy(update={"finetune": params.finetune.model_copy(update={"arms": arms})})
    before = (np.random.default_rng(0).random(200) < 0.4) * 1.0
    after = before.copy()
    after[np.flatnonzero(before == 0)[:40]] = 1.0  # 40 of 200 items gained: +0.2, the same in both seeds
    earlier, now = tmp_path / "earlier", tmp_path / "now"
    _run_tree(earlier, {"sdd": before, "sdd_seed1": before}, {"sdd": 0.8, "sdd_seed1": 0.8}, params)
    _run_tree(now, {"sdd": after, "sdd_seed1": after}, {"sdd": 0.6, "sdd_seed1": 0.6}, params)
    monkeypatch.chdir(now)
    result = study.across_runs(earlier, ["sdd"], params, read_json(now / params.paths.metrics_file("report")))
    c = result["sdd (this run) - sdd (earlier)"]
    assert c["seeds"] == {
        "a": ["sdd (this run)", "sdd_seed1 (this run)"],
        "b": ["sdd (earlier)", "sdd_seed1 (earlier)"],
    }
    assert c["above_chance"]["difference"] == pytest.approx(0.2) and 0 < c["above_chance"]["ci_low"] < 0.2
    assert c["fidelity"]["kl"]["difference"] == pytest.approx(-0.2) and c["verdict"]["claim"] == "a > b"
    assert "| `sdd (this run) - sdd (earlier)` |" in "\n".join(study.comparison_table(result))
