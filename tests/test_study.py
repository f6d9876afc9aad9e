"""The study report's pieces: stage times from logs, recovery and KL intervals, and the SVG figures
(a drawn mark for every model)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from sdd import study
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
