"""The recovery report as one summary dict: per model its scores, recovery, fidelity, held-out
measures, size and draft acceptance; per comparison a - b with CIs over seeds and items. Pure:
values in, values out (sdd/eval/markdown.py writes it as text).

    summary = summarise(evaluated, evals, baseline="base", pairs=[("sdd", "sft")], replicates={}, ...)
    headline(summary)        # the one small DVC metrics file
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sdd.errors import InputError
from sdd.eval import stats
from sdd.eval.compare import Evaluated, compare_models
from sdd.eval.tasks import TITLES
from sdd.model import pruning

SPECULATE_KEYS = ("acceptance_rate", "mean_accepted_length", "speedup")


@dataclass
class ReportInputs:
    """What the report reads besides the per-item frames (each optional stage's metrics)."""

    prune: dict | None = None
    speculate: dict[str, dict] = field(default_factory=dict)
    layer_scores: dict | None = None


def _scores(evaluation: dict) -> dict[str, stats.Score]:
    return {t: stats.Score(v["score"], v["stderr"], v["chance"], v["n"]) for t, v in evaluation["tasks"].items()}


def model_row(name: str, ev: dict, base: dict[str, stats.Score], above: list[str], context: int) -> dict:
    """One model's row: its scores and recovery (raw, chance-normalised, over the above-chance tasks),
    fidelity, held-out measures, and size from its own config."""
    scores = _scores(ev)
    if set(scores) != set(base):
        raise InputError(
            f"model {name!r} was evaluated on tasks {sorted(scores)} but the baseline on {sorted(base)}; "
            "re-run evaluate with the same evaluate.tasks for both"
        )
    avg = stats.average(scores)
    row = {
        "average": avg,
        "recovery": stats.recovery(avg, stats.average(base)),
        "recovery_chance_normalised": stats.recovery_chance_normalised(scores, base),
        **_above_chance_row(scores, base, above),
        "tasks": {t: _task_cell(s, base[t]) for t, s in scores.items()},
        "fidelity": {k: ev["fidelity"][k] for k in ("kl", "top1_agreement", "perplexity")},
        "measures": {m: v["value"] for m, v in ev.get("measures", {}).items()},
    }
    if "config" in ev:
        config = pruning.config_from_dict(ev["config"])
        row["parameters"] = pruning.parameter_count(config)
        row["flops_per_token"] = pruning.flops_per_token(config, context)
    return row


def _task_cell(s: stats.Score, base: stats.Score) -> dict:
    return {
        "score": s.score,
        "stderr": s.stderr,
        "n": s.n,
        "recovery": s.score / base.score if base.score > 0 else math.nan,
        "recovery_chance_normalised": stats.chance_normalised(s.score, base.score, base.chance),
        # below 2 stderr above chance the per-task normalised ratio is noise
        "base_near_chance": base.score - base.chance < 2 * (base.stderr or 0),
    }


def _above_chance_row(scores: dict[str, stats.Score], base: dict[str, stats.Score], above: list[str]) -> dict:
    """Average and recovery (raw, chance-normalised) over the tasks the baseline is above chance on."""
    if not above:
        return {"average_above_chance": None, "recovery_above_chance": None, "recovery_cn_above_chance": None}
    mine, theirs = {t: scores[t] for t in above}, {t: base[t] for t in above}
    avg = stats.average(mine)
    return {
        "average_above_chance": avg,
        "recovery_above_chance": stats.recovery(avg, stats.average(theirs)),
        "recovery_cn_above_chance": stats.recovery_chance_normalised(mine, theirs),
    }


def mean_margin(samples, tasks: list[str]) -> float | None:
    """The mean choice margin over the multiple-choice items of `tasks`, tasks weighted equally."""
    if "margin" not in samples.columns:
        return None
    rows = samples[samples["task"].isin(tasks) & samples["margin"].notna()]
    if rows.empty:
        return None
    return float(rows.groupby("task")["margin"].mean().mean())


def summarise(
    evaluated: dict[str, Evaluated],
    evals: dict[str, dict],
    baseline: str,
    start: str,
    pairs: list[tuple[str, str]],
    replicates: dict[str, list[str]],
    boot: dict,
    inputs: ReportInputs | None = None,
) -> dict:
    """evaluated: model -> its per-item frames; evals: model -> its evaluate metrics JSON; baseline: the
    model recovery is measured against (base); start: the one recovery starts from (pruned); pairs: the
    comparisons (a, b); replicates: model -> the same recipe under other seeds; boot: iterations,
    confidence, seed of every bootstrap."""
    inputs = inputs or ReportInputs()
    if baseline not in evals:
        raise InputError(f"report.baseline={baseline!r} has no evaluation; evaluated: {sorted(evals)}")
    base = _scores(evals[baseline])
    above = stats.above_chance(base)
    context = (inputs.prune or {}).get("flops_context", 0)
    models = {name: model_row(name, ev, base, above, context) for name, ev in evals.items()}
    for name, row in models.items():
        row["margin"] = mean_margin(evaluated[name].samples, above or sorted(base))
        evaluated[name].summary = row
        if name in inputs.speculate:
            row["speculate"] = {k: inputs.speculate[name].get(k) for k in (*SPECULATE_KEYS, "k", "temperature")}
    comparisons = {
        f"{a}-{b}": c
        for a, b in pairs
        if (
            c := compare_models(
                a, b, evaluated, replicates, above, boot["iterations"], boot["confidence"], boot["seed"]
            )
        )
    }
    return {
        "baseline": baseline,
        "start": start,
        "tasks": [t for t in TITLES if t in base] + sorted(set(base) - set(TITLES)),
        "models": models,
        "replicates": {k: v for k, v in replicates.items() if k in models},
        "comparisons": comparisons,
        "prune": inputs.prune,
        "flops_context": context,
        "chance": {t: s.chance for t, s in base.items()},
        "above_chance_tasks": above,
        "layer_selection": layer_selection(inputs.layer_scores, inputs.prune) if inputs.layer_scores else None,
        "settings": _settings(evals[baseline]),
    }


def _settings(evaluation: dict) -> dict:
    tasks = evaluation["tasks"]
    return {
        **evaluation["settings"],
        "shots": {t: v["shots"] for t, v in tasks.items()},
        "limit": {t: v["limit"] for t, v in tasks.items()},
        "fewshot_split": {t: v["fewshot_split"] for t, v in tasks.items()},
        "precision": evaluation.get("precision"),
    }


def layer_selection(scores: dict, prune: dict | None) -> dict:
    """Which block each metric picks for the pruned depth, with the measured KL where kl_to_base
    ran, and each proxy's Spearman rank correlation with that KL over the measured candidates."""
    n = str(prune["n_layers"]) if prune else str(min(int(k) for k in scores["best_start"]))
    measured = scores.get("kl_to_base", {}).get(n)
    chosen = {}
    for metric, by_n in scores["best_start_by_metric"].items():
        if n not in by_n:
            continue
        start = by_n[n]
        row = {"start": start, "layers": [start, start + int(n) - 1]}
        if measured:  # every metric's choice is among the measured candidates
            fid = next(c for c in measured["candidates"] if c["start"] == start)
            row.update(kl=fid["kl"], top1=fid["top1"], rank_correlation=measured["rank_correlation"].get(metric))
        chosen[metric] = row
    return {
        "n_layers": int(n),
        "metric": scores["metric"],
        "token": scores.get("token"),
        "chosen_by": chosen,
        "candidates": len(measured["candidates"]) if measured else 0,
        "pruned_start": prune.get("start") if prune else None,
    }


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


def headline(summary: dict) -> dict:
    """The report's declared DVC metrics, few enough to compare experiments on one screen: per
    non-baseline model its recovery (over the above-chance tasks when there are some) and KL to the
    base; per recovered model its gold NLL; per comparison with a declared control the difference."""
    above = bool(summary["above_chance_tasks"])
    out: dict = {}
    for name, m in summary["models"].items():
        if name == summary["baseline"]:
            continue
        cell = {"recovery": _round(m["recovery_above_chance"] if above else m["recovery"])}
        cell["kl"] = _round(m["fidelity"]["kl"])
        if "gold_nll" in m["measures"]:
            cell["gold_nll"] = _round(m["measures"]["gold_nll"])
        out[name] = cell
    for pair, c in summary["comparisons"].items():
        if not pair.endswith(f"-{summary['start']}"):
            out[pair] = {"difference": _round(c["verdict"]["difference"])}
    return out


def sweep_rows(summary: dict) -> list[dict]:
    """One row per non-baseline model of this run, at its cut depth: `dvc plots diff` over the
    experiments of a `prune.n_layers` sweep draws one point per (experiment, model)."""
    prune = summary["prune"] or {}
    return [
        {
            "model": n,
            "n_layers": prune.get("n_layers"),
            "start": prune.get("start"),
            "flops_reduction_pct": prune.get("flops_reduction_pct"),
            "params_reduction_pct": prune.get("params_reduction_pct"),
            "recovery": _pct(m["recovery"]),
            "recovery_chance_normalised": _pct(m["recovery_chance_normalised"]),
            "kl": _round(m["fidelity"]["kl"]),
            "top1_agreement": _pct(m["fidelity"]["top1_agreement"]),
        }
        for n, m in summary["models"].items()
        if n != summary["baseline"]
    ]


def _pct(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(100 * x, 2)


def plot_rows(summary: dict) -> tuple[list[dict], list[dict]]:
    """Rows for `dvc plots`: recovery per model, and score per (task, model) (one bar each)."""
    rec = [
        {
            "model": n,
            "recovery": _pct(m["recovery"]),
            "recovery_chance_normalised": _pct(m["recovery_chance_normalised"]),
        }
        for n, m in summary["models"].items()
    ]
    per_task = [
        {
            "bar": f"{TITLES.get(t, t)} · {n}",
            "task": TITLES.get(t, t),
            "model": n,
            "score": _pct(m["tasks"][t]["score"]),
        }
        for t in summary["tasks"]
        for n, m in summary["models"].items()
    ]
    return rec, per_task
