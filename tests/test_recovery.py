"""Recovery math and the paired bootstrap on hand-made per-sample tables with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sdd.eval import stats


def table(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["task", "subtask", "doc_id", "score", "chance"])


def test_task_score_is_macro_average_over_subtasks():
    # Subject a: 2 of 2 right; subject b: 0 of 2 right plus one more right -> 1/3.
    rows = table(
        [
            ("mmlu", "a", 0, 1, 0.25),
            ("mmlu", "a", 1, 1, 0.25),
            ("mmlu", "b", 0, 0, 0.25),
            ("mmlu", "b", 1, 0, 0.25),
            ("mmlu", "b", 2, 1, 0.25),
        ]
    )
    s = stats.task_score(rows)
    assert s.score == pytest.approx((1.0 + 1 / 3) / 2)
    assert s.chance == pytest.approx(0.25) and s.n == 5
    var = np.var([1, 1, 0, 0, 1], ddof=1)
    assert s.stderr == pytest.approx(math.sqrt(var / 2 + var / 3) / 2)


def test_single_subtask_stderr_is_the_usual_one():
    scores = [1, 0, 1, 1, 0, 1, 0, 1]
    s = stats.task_score(table([("arc", "arc", i, v, 0.25) for i, v in enumerate(scores)]))
    assert s.score == pytest.approx(0.625)
    assert s.stderr == pytest.approx(np.std(scores, ddof=1) / math.sqrt(8))


def test_average_recovery_and_chance_normalised():
    base = {"arc": stats.Score(0.6, 0, 0.25, 10), "wino": stats.Score(0.7, 0, 0.5, 10)}
    model = {"arc": stats.Score(0.4, 0, 0.25, 10), "wino": stats.Score(0.6, 0, 0.5, 10)}
    assert stats.average(base) == pytest.approx(0.65)
    assert stats.recovery(stats.average(model), stats.average(base)) == pytest.approx(0.5 / 0.65)
    assert stats.chance_normalised(0.4, 0.6, 0.25) == pytest.approx(0.15 / 0.35)
    # Over the average: (0.5 - 0.375) / (0.65 - 0.375)
    assert stats.recovery_chance_normalised(model, base) == pytest.approx(0.125 / 0.275)
    # A model reduced to guessing keeps a large raw recovery but 0 chance-normalised stats.
    chance = {"arc": stats.Score(0.25, 0, 0.25, 10), "wino": stats.Score(0.5, 0, 0.5, 10)}
    assert stats.recovery(stats.average(chance), stats.average(base)) == pytest.approx(0.375 / 0.65)
    assert stats.recovery_chance_normalised(chance, base) == pytest.approx(0.0)


def test_chance_normalised_undefined_when_base_at_chance():
    assert math.isnan(stats.chance_normalised(0.3, 0.25, 0.25))
    with pytest.raises(ValueError, match="positive baseline"):
        stats.recovery(0.5, 0.0)


def test_paired_bootstrap_constant_difference_has_a_point_interval():
    # Every item's difference is 0.5 (MC2-like fractional scores), so every resample gives 0.5.
    a = table([("t", "t", i, 0.75, 0.25) for i in range(10)])
    b = table([("t", "t", i, 0.25, 0.25) for i in range(10)])
    out = stats.paired_bootstrap(a, b, iterations=500, confidence=0.95, seed=0)
    assert out["difference"] == pytest.approx(0.5)
    assert out["ci_low"] == pytest.approx(0.5) and out["ci_high"] == pytest.approx(0.5)
    assert out["paired_items"] == 10 and out["unpaired_items"] == 0


def test_paired_bootstrap_known_interval_and_weights():
    # Task x: a right on all 4, b right on 2 -> +0.5. Task y (2 subjects): identical -> 0.
    # Average difference = (0.5 + 0) / 2 = 0.25. The 2.5%/97.5% quantiles of the bootstrap of
    # mean(diff) with diff in {1,1,0,0} over 4 draws: possible means 0, .25, .5, .75, 1.
    a = table(
        [("x", "x", i, 1, 0.5) for i in range(4)] + [("y", s, i, v, 0.5) for s in "pq" for i, v in enumerate([1, 0])]
    )
    b = table(
        [("x", "x", i, v, 0.5) for i, v in enumerate([1, 1, 0, 0])]
        + [("y", s, i, v, 0.5) for s in "pq" for i, v in enumerate([1, 0])]
    )
    out = stats.paired_bootstrap(a, b, iterations=4000, confidence=0.95, seed=1)
    assert out["difference"] == pytest.approx(0.25)
    # Half-weighted task x: the interval is [0, 0.5] (means 0 and 1 each have probability 1/16).
    assert out["ci_low"] == pytest.approx(0.0) and out["ci_high"] == pytest.approx(0.5)
    # Same seed, same answer.
    assert stats.paired_bootstrap(a, b, 4000, 0.95, 1) == out


def test_paired_bootstrap_pairs_only_shared_items():
    a = table([("t", "t", i, 1, 0.5) for i in range(5)])
    b = table([("t", "t", i, 0, 0.5) for i in range(3)])
    out = stats.paired_bootstrap(a, b, 200, 0.9, 0)
    assert out["paired_items"] == 3 and out["unpaired_items"] == 2 and out["difference"] == 1.0
    with pytest.raises(ValueError, match="share no evaluated items"):
        stats.paired_bootstrap(a, table([("u", "u", 0, 1, 0.5)]), 200, 0.9, 0)
