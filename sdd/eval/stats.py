"""Recovery math on per-sample tables: task scores, recovery (raw and chance-normalised), and the
paired bootstrap CI of a difference in average score. Pure: DataFrames in, numbers out.

    from sdd.eval.stats import task_scores, average, recovery, chance_normalised, paired_bootstrap
    scores = task_scores(samples)             # {task: Score(score, stderr, chance, n)}
    recovery(average(model), average(base))  # the paper's recovery (Thangarasa et al. 2024, Table 1)

Per-sample frames have the EVAL_SAMPLES columns task, subtask, doc_id, score, chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sdd.errors import InputError


@dataclass(frozen=True)
class Score:
    score: float
    stderr: float
    chance: float
    n: int


def task_score(rows: pd.DataFrame) -> Score:
    """One task's score: the mean over subtasks of the subtask means (MMLU: the average over
    subjects, as the OpenLLM leaderboard v1 reports it; a single-subtask task: the plain mean).

    stderr of that macro average: sqrt(sum_g s^2 / n_g) / G with one pooled sample variance s^2 over
    all items of the task (a per-subject variance is undefined with one item per subject).
    """
    groups = rows.groupby("subtask", sort=True)
    means, chances, sizes = groups["score"].mean(), groups["chance"].mean(), groups.size()
    n = len(rows)
    var = float(rows["score"].var(ddof=1)) if n > 1 else float("nan")
    stderr = math.sqrt(float((var / sizes).sum())) / len(sizes) if n > 1 else float("nan")
    return Score(float(means.mean()), stderr, float(chances.mean()), n)


def task_scores(samples: pd.DataFrame) -> dict[str, Score]:
    return {task: task_score(rows) for task, rows in samples.groupby("task", sort=True)}


def average(scores: dict[str, Score]) -> float:
    """Leaderboard average: the unweighted mean of the task scores."""
    return float(np.mean([s.score for s in scores.values()]))


def recovery(model_avg: float, base_avg: float) -> float:
    """recovery = average(model) / average(base) (Thangarasa et al. 2024, Sec. 4)."""
    if base_avg <= 0:
        raise InputError(f"the baseline's average score is {base_avg}; recovery needs a positive baseline")
    return model_avg / base_avg


def chance_normalised(score: float, base: float, chance: float) -> float:
    """(score - chance) / (base - chance): the share of the base model's above-chance skill kept.

    Raw recovery credits a broken model with the chance level (88% for a model reduced to guessing,
    DESIGN.md pitfalls); this does not. NaN where the base is not above chance.
    """
    if base - chance <= 0:
        return float("nan")
    return (score - chance) / (base - chance)


def recovery_chance_normalised(model: dict[str, Score], base: dict[str, Score]) -> float:
    """Over the average: (avg(model) - avg(chance)) / (avg(base) - avg(chance)), which stays defined
    when a single task's base score sits at chance (per-task ratios are then unstable)."""
    chance = np.mean([base[t].chance for t in base])
    return chance_normalised(average({t: model[t] for t in base}), average(base), float(chance))


def above_chance(base: dict[str, Score], z: float = 2.0) -> list[str]:
    """The tasks on which the baseline scores at least `z` standard errors above chance: the only
    ones where a recovered model can show a difference (near chance, a task adds noise and no signal
    to the average). A task without a standard error (one item), or scored exactly at chance (e.g.
    every GSM8k answer wrong: 0 with stderr 0), is not counted as above chance."""
    margin = {t: s.score - s.chance for t, s in base.items()}
    return sorted(
        t for t, s in base.items() if not math.isnan(s.stderr) and margin[t] > 0 and margin[t] >= z * s.stderr
    )


MIN_RESAMPLE_ITEMS = 5
"""Fewest items a bootstrap stratum may have. Resampling n items with replacement gives the mean a
variance of (n - 1) / n * s^2 / n, (n - 1) / n of the plug-in value: none with 1 item, half with 2,
80% with 5. Smaller strata would make the interval too narrow."""


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, iterations: int, confidence: float, seed: int) -> dict:
    """Paired bootstrap CI of average(a) - average(b) over the items both models were scored on.

    Items are paired on (task, subtask, doc_id); the average is linear in the subtask means, so the
    difference is sum_i w_i (a_i - b_i) with w_i = 1 / (tasks * subtasks of its task * items of its
    subtask). Each task is resampled on its own (stratified bootstrap, Efron & Tibshirani 1993,
    ch. 16; paired comparison as in Koehn 2004 for MT), at a level with enough items:

    - every subtask has >= MIN_RESAMPLE_ITEMS paired items: items are resampled within each subtask;
    - some subtask has fewer (MMLU with 2 items per subject): the task's items are resampled jointly
      and each replicate is the weighted mean sum w_i d_i / sum w_i over the drawn items (equal
      subtask sizes: the plain mean of the task's items);
    - the task itself has fewer than MIN_RESAMPLE_ITEMS paired items (GSM8k with limit 1): its
      sampling variance cannot be estimated, so no CI is given (ci_low = ci_high = None, the reason
      in `ci_unavailable`); the difference is still reported.

    Percentile interval. `unpaired_items` counts the items only one of the two was scored on.
    """
    keys = ["task", "subtask", "doc_id"]
    joined = a[keys + ["score"]].merge(b[keys + ["score"]], on=keys, suffixes=("_a", "_b"), validate="one_to_one")
    if joined.empty:
        raise InputError(
            "the two models share no evaluated items (task, subtask, doc_id); evaluate both "
            "with the same evaluate.tasks settings"
        )
    joined["diff"] = joined["score_a"] - joined["score_b"]
    n_tasks = joined["task"].nunique()
    sizes = joined.groupby(["task", "subtask"])["diff"].transform("size")
    n_sub = joined.groupby("task")["subtask"].transform("nunique")
    joined["weight"] = 1.0 / (n_tasks * n_sub * sizes)
    observed = float((joined["weight"] * joined["diff"]).sum())
    rng = np.random.default_rng(seed)
    total = np.zeros(iterations)
    resampled_by: dict[str, str | None] = {}
    too_small: list[str] = []
    for task, rows in joined.groupby("task", sort=True):
        smallest = int(rows.groupby("subtask").size().min())
        if len(rows) < MIN_RESAMPLE_ITEMS:
            resampled_by[task] = None
            too_small.append(f"{task} ({len(rows)} paired items)")
        elif smallest >= MIN_RESAMPLE_ITEMS:
            resampled_by[task] = "subtask"
            for _, sub in rows.groupby("subtask", sort=True):
                diff, weight = sub["diff"].to_numpy(), float(sub["weight"].sum())
                picks = rng.integers(0, len(diff), size=(iterations, len(diff)))
                total += weight * diff[picks].mean(axis=1)
        else:
            resampled_by[task] = "task"
            diff, weight = rows["diff"].to_numpy(), rows["weight"].to_numpy()
            picks = rng.integers(0, len(diff), size=(iterations, len(diff)))
            total += weight.sum() * (weight[picks] * diff[picks]).sum(axis=1) / weight[picks].sum(axis=1)
    low: float | None = None
    high: float | None = None
    reason: str | None = None
    if too_small:
        reason = (
            f"too few items to resample: {', '.join(too_small)}; a task needs at least {MIN_RESAMPLE_ITEMS} "
            f"(raise evaluate.tasks.<task>.limit)"
        )
    else:
        alpha = (1.0 - confidence) / 2
        low, high = (float(q) for q in np.quantile(total, [alpha, 1 - alpha]))
    return {
        "difference": observed,
        "ci_low": low,
        "ci_high": high,
        "ci_unavailable": reason,
        "confidence": confidence,
        "iterations": iterations,
        "resampled_by": resampled_by,
        "paired_items": int(len(joined)),
        "unpaired_items": int(len(a) + len(b) - 2 * len(joined)),
    }


FIDELITY_METRICS = {"kl": "kl_sum", "top1_agreement": "top1_sum", "perplexity": "nll_sum"}


def _ratio(sums: np.ndarray, tokens: np.ndarray, metric: str) -> np.ndarray:
    """Token-weighted mean over prompts (the last axis); perplexity is exp of the mean NLL."""
    mean = sums.sum(axis=-1) / tokens.sum(axis=-1)
    return np.exp(mean) if metric == "perplexity" else mean


def paired_fidelity_bootstrap(
    a: pd.DataFrame, b: pd.DataFrame, iterations: int, confidence: float, seed: int
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap CIs of fidelity(a) - fidelity(b) for KL, top-1 agreement and perplexity.

    `a`, `b`: per-prompt frames (sdd.eval.fidelity.FIDELITY_PER_PROMPT: tokens and the sums over
    the reference's continuation). Prompts are paired on (prompt_set, id) and resampled jointly, the
    same draw for both models; each replicate recomputes the token-weighted means (a ratio estimator,
    as the metrics themselves are). Percentile interval.
    """
    keys = ["prompt_set", "id"]
    joined = a.merge(b, on=keys, suffixes=("_a", "_b"), validate="one_to_one")
    if joined.empty:
        raise InputError(
            "the two models share no fidelity prompts (prompt_set, id); evaluate both with the same "
            "evaluate.fidelity settings"
        )
    unavailable = None
    if len(joined) < MIN_RESAMPLE_ITEMS:  # as for items: resampling fewer understates the variance
        unavailable = f"{len(joined)} paired prompts; at least {MIN_RESAMPLE_ITEMS} are resampled"
    picks = np.random.default_rng(seed).integers(0, len(joined), size=(iterations, len(joined)))
    alpha = (1.0 - confidence) / 2
    out = {}
    for metric, column in FIDELITY_METRICS.items():
        diffs = []
        for side in ("a", "b"):
            sums, tokens = joined[f"{column}_{side}"].to_numpy(), joined[f"tokens_{side}"].to_numpy()
            diffs.append((_ratio(sums, tokens, metric), _ratio(sums[picks], tokens[picks], metric)))
        (obs_a, rep_a), (obs_b, rep_b) = diffs
        low, high = (None, None) if unavailable else (float(q) for q in np.quantile(rep_a - rep_b, [alpha, 1 - alpha]))
        out[metric] = {
            "a": float(obs_a),
            "b": float(obs_b),
            "difference": float(obs_a - obs_b),
            "ci_low": low,
            "ci_high": high,
            "ci_unavailable": unavailable,
            "confidence": confidence,
            "iterations": iterations,
            "prompts": len(joined),
        }
    return out


def mean_over_seeds(frames: list[pd.DataFrame], keys: list[str], columns: list[str]) -> pd.DataFrame:
    """Per-item mean of `columns` over replicate models (the same items, e.g. one arm under several
    seeds): the seed-averaged model a comparison of recipes pairs on. Items not scored by every
    replicate are dropped."""
    if len(frames) == 1:
        return frames[0]
    stacked = pd.concat([f[keys + columns] for f in frames])
    counts = stacked.groupby(keys, sort=False)[columns[0]].transform("size")
    return stacked[counts == len(frames)].groupby(keys, sort=False, as_index=False)[columns].mean()
