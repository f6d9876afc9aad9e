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

    Raw recovery credits a broken model with the chance level (88% for a SmolLM2 cut that reduced it
    to guessing); this does not. NaN where the base is not above chance.
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


ITEM_KEYS = ["task", "subtask", "doc_id"]


def _seed_matrix(frames: list[pd.DataFrame], keys: list[str], columns: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(the items every replicate scored, in one order; array seeds x items x columns)."""
    common = frames[0][keys]
    for f in frames[1:]:
        common = common.merge(f[keys], on=keys)
    values = [common.merge(f[keys + columns], on=keys, how="left")[columns].to_numpy(float) for f in frames]
    return common, np.stack(values)


def _seed_means(values: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Per bootstrap replicate, the mean over the drawn seeds: (iterations, items, columns)."""
    return values[picks].mean(axis=1)


def hierarchical_bootstrap(
    a: list[pd.DataFrame],
    b: list[pd.DataFrame],
    iterations: int,
    confidence: float,
    seed: int,
    column: str = "score",
) -> dict:
    """CI of average(a) - average(b) over seeds and items together: each side is one recipe trained
    under several seeds (a list of per-item frames, one per replicate; one frame = one model), and
    the estimate is the difference of the seed-averaged averages.

    Each bootstrap replicate resamples, in two levels (a two-stage cluster bootstrap, Davison &
    Hinkley 1997, sec. 3.8; Field & Welsh 2007): first each side's seeds with replacement, then the
    items, paired (the same draw for both sides) and stratified by task as below; the replicate is
    the weighted mean difference over the drawn items of the drawn seeds' per-item means. It carries
    the spread between training runs as well as the sampling of items, which a range of two seeds or
    an item-only CI do not (tests/test_recovery.py checks its coverage on a simulation with a known
    difference). With one model per side it is the paired item bootstrap.

    Items are paired on (task, subtask, doc_id) and kept when every replicate of both sides scored
    them; the average is linear in the subtask means, so item i weighs w_i = 1 / (tasks * subtasks
    of its task * items of its subtask). Each task is resampled on its own (Efron & Tibshirani 1993,
    ch. 16), at a level with enough items:
    - every subtask has >= MIN_RESAMPLE_ITEMS items: items are resampled within each subtask;
    - some subtask has fewer (MMLU with 2 items per subject): the task's items are resampled jointly,
      each replicate the weighted mean sum w_i d_i / sum w_i over the drawn items;
    - the task has fewer than MIN_RESAMPLE_ITEMS items (GSM8k with limit 1): no CI (the reason in
      `ci_unavailable`); the difference is still reported.
    `column` is the per-item value compared (score, or margin). Percentile interval.
    """
    keys = ITEM_KEYS
    present = [f.dropna(subset=[column]) for f in a + b]
    items, values = _seed_matrix(present, keys, [column])
    if items.empty:
        raise InputError(
            "the two models share no evaluated items (task, subtask, doc_id); evaluate both "
            "with the same evaluate.tasks settings"
        )
    va, vb = values[: len(a), :, 0], values[len(a) :, :, 0]
    diff = va.mean(axis=0) - vb.mean(axis=0)
    frame = items.assign(diff=diff)
    n_tasks = frame["task"].nunique()
    sizes = frame.groupby(["task", "subtask"])["diff"].transform("size")
    n_sub = frame.groupby("task")["subtask"].transform("nunique")
    weight = (1.0 / (n_tasks * n_sub * sizes)).to_numpy()
    observed = float((weight * diff).sum())
    rng = np.random.default_rng(seed)
    seeds_a = rng.integers(0, len(a), size=(iterations, len(a)))
    seeds_b = rng.integers(0, len(b), size=(iterations, len(b)))
    drawn = va[seeds_a].mean(axis=1) - vb[seeds_b].mean(axis=1)  # (iterations, items)
    total = np.zeros(iterations)
    resampled_by: dict[str, str | None] = {}
    too_small: list[str] = []
    for task, rows in frame.groupby("task", sort=True):
        smallest = int(rows.groupby("subtask").size().min())
        if len(rows) < MIN_RESAMPLE_ITEMS:
            resampled_by[str(task)] = None
            too_small.append(f"{task} ({len(rows)} paired items)")
            continue
        strata = [r.index.to_numpy() for _, r in rows.groupby("subtask", sort=True)]
        resampled_by[str(task)] = "subtask" if smallest >= MIN_RESAMPLE_ITEMS else "task"
        for idx in strata if smallest >= MIN_RESAMPLE_ITEMS else [rows.index.to_numpy()]:
            picks = idx[rng.integers(0, len(idx), size=(iterations, len(idx)))]
            w = weight[picks]
            d = np.take_along_axis(drawn, picks, axis=1)
            total += weight[idx].sum() * (w * d).sum(axis=1) / w.sum(axis=1)
    low = high = None
    reason = None
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
        "seeds": [len(a), len(b)],
        "resampled_by": resampled_by,
        "paired_items": int(len(items)),
        "unpaired_items": int(sum(len(f) for f in present) - len(present) * len(items)),
    }


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, iterations: int, confidence: float, seed: int) -> dict:
    """The paired item bootstrap of average(a) - average(b): `hierarchical_bootstrap` with one model a side."""
    return hierarchical_bootstrap([a], [b], iterations, confidence, seed)


FIDELITY_METRICS = {"kl": "kl_sum", "top1_agreement": "top1_sum", "perplexity": "nll_sum"}


def _ratio(sums: np.ndarray, tokens: np.ndarray, metric: str) -> np.ndarray:
    """Token-weighted mean over prompts (the last axis); perplexity is exp of the mean NLL."""
    mean = sums.sum(axis=-1) / tokens.sum(axis=-1)
    return np.exp(mean) if metric == "perplexity" else mean


def ratio_bootstrap(
    a: list[pd.DataFrame],
    b: list[pd.DataFrame],
    metrics: dict[str, str],
    keys: list[str],
    iterations: int,
    confidence: float,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """CIs of token-weighted per-prompt measures, a - b, resampling seeds then prompts (as
    `hierarchical_bootstrap`). `metrics`: name -> the column of per-prompt sums; `tokens` holds each
    prompt's token count (the same text for every model, so the same count). Each replicate
    recomputes the ratio sum(values) / sum(tokens) over the drawn prompts of each side's drawn seeds'
    per-prompt means (a ratio estimator, as the measures themselves are). Percentile interval."""
    columns = ["tokens", *metrics.values()]
    items, values = _seed_matrix(a + b, keys, columns)
    if items.empty:
        raise InputError(
            "the two models share no prompts (prompt set, id); evaluate both with the same evaluate settings"
        )
    unavailable = None
    if len(items) < MIN_RESAMPLE_ITEMS:  # as for items: resampling fewer understates the variance
        unavailable = f"{len(items)} paired prompts; at least {MIN_RESAMPLE_ITEMS} are resampled"
    rng = np.random.default_rng(seed)
    seeds = {
        "a": rng.integers(0, len(a), size=(iterations, len(a))),
        "b": rng.integers(0, len(b), size=(iterations, len(b))),
    }
    picks = rng.integers(0, len(items), size=(iterations, len(items)))
    sides = {"a": values[: len(a)], "b": values[len(a) :]}
    alpha = (1.0 - confidence) / 2
    out = {}
    for j, (metric, _) in enumerate(metrics.items(), start=1):
        observed, replicates = {}, {}
        for side, vals in sides.items():
            mean = vals.mean(axis=0)  # items x columns
            observed[side] = _ratio(mean[:, j], mean[:, 0], metric)
            drawn = vals[seeds[side]].mean(axis=1)  # iterations x items x columns
            sums = np.take_along_axis(drawn[:, :, j], picks, axis=1)
            tokens = np.take_along_axis(drawn[:, :, 0], picks, axis=1)
            replicates[side] = _ratio(sums, tokens, metric)
        rep = replicates["a"] - replicates["b"]
        low, high = (None, None) if unavailable else (float(q) for q in np.quantile(rep, [alpha, 1 - alpha]))
        out[metric] = {
            "a": float(observed["a"]),
            "b": float(observed["b"]),
            "difference": float(observed["a"] - observed["b"]),
            "ci_low": low,
            "ci_high": high,
            "ci_unavailable": unavailable,
            "confidence": confidence,
            "iterations": iterations,
            "seeds": [len(a), len(b)],
            "prompts": len(items),
        }
    return out


def paired_fidelity_bootstrap(
    a: pd.DataFrame, b: pd.DataFrame, iterations: int, confidence: float, seed: int
) -> dict[str, dict[str, Any]]:
    """Paired CIs of fidelity(a) - fidelity(b) for KL, top-1 agreement and perplexity, over prompts
    paired on (prompt_set, id) (sdd.eval.fidelity.FIDELITY_PER_PROMPT): `ratio_bootstrap`, one model a side."""
    return ratio_bootstrap([a], [b], FIDELITY_METRICS, ["prompt_set", "id"], iterations, confidence, seed)


def mean_over_seeds(frames: list[pd.DataFrame], keys: list[str], columns: list[str]) -> pd.DataFrame:
    """Per-item mean of `columns` over replicate models (the same items, e.g. one arm under several
    seeds): the seed-averaged model a comparison of recipes pairs on. Items not scored by every
    replicate are dropped."""
    if len(frames) == 1:
        return frames[0]
    stacked = pd.concat([f[keys + columns] for f in frames])
    counts = stacked.groupby(keys, sort=False)[columns[0]].transform("size")
    return stacked[counts == len(frames)].groupby(keys, sort=False, as_index=False)[columns].mean()
