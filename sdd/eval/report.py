"""The recovery table: per-model scores, recovery, fidelity, size, speculative decoding, and the
paired bootstrap comparisons, as one summary dict and as Markdown. Pure: values in, values out.

    from sdd.eval.report import summarise, markdown
    summary = summarise(evals, samples, baseline="base", compare=[("sdd", "sft")], prune=..., configs=...)
    text = markdown(summary)
"""

from __future__ import annotations

import math

import pandas as pd

from sdd.errors import InputError
from sdd.eval import stats
from sdd.eval.tasks import EVAL_TASK_TITLES
from sdd.model import pruning

SPECULATE_KEYS = ("acceptance_rate", "mean_accepted_length", "speedup")


def _scores(evaluation: dict) -> dict[str, stats.Score]:
    return {t: stats.Score(v["score"], v["stderr"], v["chance"], v["n"]) for t, v in evaluation["tasks"].items()}


def summarise(
    evals: dict[str, dict],
    samples: dict[str, pd.DataFrame],
    baseline: str,
    compare: list[tuple[str, str]],
    bootstrap: int,
    confidence: float,
    seed: int,
    prune: dict | None = None,
    speculate: dict[str, dict] | None = None,
    layer_scores: dict | None = None,
    configs: dict[str, dict] | None = None,
    fidelity: dict[str, pd.DataFrame] | None = None,
    replicates: dict[str, list[str]] | None = None,
) -> dict:
    """evals: model -> evaluate metrics JSON; samples: model -> EVAL_SAMPLES frame; fidelity: model ->
    its per-prompt fidelity frame (paired fidelity CIs); replicates: model -> the same arm under other
    seeds (a comparison pairs the seed-averaged models and reports the between-seed spread); layer_scores:
    the layer_scores stage's scores.json (which block each metric picks, and how well it predicts KL);
    configs: model -> its config.json contents, from which each model's own unique parameters and
    forward FLOPs per token are computed (n_ctx = prune's flops_context, 0 without prune)."""
    if baseline not in evals:
        raise InputError(f"report.baseline={baseline!r} has no evaluation; evaluated: {sorted(evals)}")
    base = _scores(evals[baseline])
    above = stats.above_chance(base)
    context = (prune or {}).get("flops_context", 0)
    models = {}
    for name, ev in evals.items():
        scores = _scores(ev)
        if set(scores) != set(base):
            raise InputError(
                f"model {name!r} was evaluated on tasks {sorted(scores)} but {baseline!r} on "
                f"{sorted(base)}; re-run evaluate with the same evaluate.tasks for both"
            )
        avg = stats.average(scores)
        row = {
            "average": avg,
            "recovery": stats.recovery(avg, stats.average(base)),
            "recovery_chance_normalised": stats.recovery_chance_normalised(scores, base),
            **_above_chance_row(scores, base, above),
            "tasks": {
                t: {
                    "score": s.score,
                    "stderr": s.stderr,
                    "n": s.n,
                    "recovery": s.score / base[t].score if base[t].score > 0 else math.nan,
                    "recovery_chance_normalised": stats.chance_normalised(s.score, base[t].score, base[t].chance),
                    # below 2 stderr above chance the per-task normalised ratio is noise
                    "base_near_chance": base[t].score - base[t].chance < 2 * (base[t].stderr or 0),
                }
                for t, s in scores.items()
            },
            "fidelity": {k: ev["fidelity"][k] for k in ("kl", "top1_agreement", "perplexity")},
        }
        if configs and name in configs:
            config = pruning.config_from_dict(configs[name])
            row["parameters"] = pruning.parameter_count(config)
            row["flops_per_token"] = pruning.flops_per_token(config, context)
        if speculate and name in speculate:
            row["speculate"] = {k: speculate[name].get(k) for k in SPECULATE_KEYS + ("k", "temperature")}
        models[name] = row
    comparisons = {
        f"{a}-{b}": compared
        for a, b in compare
        if (
            compared := compare_models(
                a, b, models, samples, fidelity or {}, replicates or {}, above, bootstrap, confidence, seed
            )
        )
    }
    settings = evals[baseline]["settings"]
    order = [t for t in EVAL_TASK_TITLES if t in base] + sorted(set(base) - set(EVAL_TASK_TITLES))
    return {
        "baseline": baseline,
        "tasks": order,
        "models": models,
        "comparisons": comparisons,
        "prune": prune,
        "flops_context": context,
        "chance": {t: s.chance for t, s in base.items()},
        "above_chance_tasks": above,
        "layer_selection": layer_selection(layer_scores, prune) if layer_scores else None,
        "settings": {
            **settings,
            "shots": {t: v["shots"] for t, v in evals[baseline]["tasks"].items()},
            "limit": {t: v["limit"] for t, v in evals[baseline]["tasks"].items()},
            "fewshot_split": {t: v["fewshot_split"] for t, v in evals[baseline]["tasks"].items()},
        },
    }


ITEM_KEYS = ["task", "subtask", "doc_id"]
FIDELITY_KEYS = ["prompt_set", "id"]
FIDELITY_SUMS = ["tokens", "kl_sum", "top1_sum", "nll_sum"]


def compare_models(
    a: str,
    b: str,
    models: dict,
    samples: dict[str, pd.DataFrame],
    fidelity: dict[str, pd.DataFrame],
    replicates: dict[str, list[str]],
    above: list[str],
    bootstrap: int,
    confidence: float,
    seed: int,
) -> dict | None:
    """One comparison a - b: paired bootstrap CIs over items (all tasks, above-chance tasks) and over
    fidelity prompts, on the seed-averaged models when replicates exist, with the between-seed spread
    and the verdict. None when a model of either side was not evaluated."""
    groups = {side: [name, *replicates.get(name, [])] for side, name in (("a", a), ("b", b))}
    if not all(m in samples for m in groups["a"] + groups["b"]):
        return None
    pooled = {k: stats.mean_over_seeds([samples[m] for m in g], ITEM_KEYS, ["score"]) for k, g in groups.items()}
    out = stats.paired_bootstrap(pooled["a"], pooled["b"], bootstrap, confidence, seed)
    if above:
        on = {k: f[f["task"].isin(above)] for k, f in pooled.items()}
        out["above_chance"] = stats.paired_bootstrap(on["a"], on["b"], bootstrap, confidence, seed)
    if all(m in fidelity for m in groups["a"] + groups["b"]):
        fid = {
            k: stats.mean_over_seeds([fidelity[m] for m in g], FIDELITY_KEYS, FIDELITY_SUMS) for k, g in groups.items()
        }
        out["fidelity"] = stats.paired_fidelity_bootstrap(fid["a"], fid["b"], bootstrap, confidence, seed)
    out["seeds"] = groups
    out["seed_spread"] = {
        key: _spread([models[m][key] for m in groups["a"]], [models[m][key] for m in groups["b"]])
        for key in ("average", "average_above_chance")
        if all(models[m].get(key) is not None for m in groups["a"] + groups["b"])
    }
    out["verdict"] = verdict(out)
    return out


def _spread(a: list[float], b: list[float]) -> dict:
    """Between-seed spread of a and b: each side's values, the larger of their ranges, and the
    differences seed by seed (a_i - b_i)."""
    return {
        "a": a,
        "b": b,
        "range": max(max(a) - min(a), max(b) - min(b)),
        "per_seed_differences": [x - y for x, y in zip(a, b, strict=False)],
    }


def verdict(comparison: dict) -> dict:
    """Is a - b shown? On the above-chance average when there is one, else the whole average: only
    when the paired CI excludes 0 AND the difference exceeds the between-seed range (with a single
    seed per side the range is unknown and the verdict says so)."""
    scope = "above_chance" if "above_chance" in comparison else "average"
    c = comparison["above_chance"] if scope == "above_chance" else comparison
    spread = comparison["seed_spread"].get("average_above_chance" if scope == "above_chance" else "average")
    seeds = min(len(comparison["seeds"]["a"]), len(comparison["seeds"]["b"]))
    diff = c["difference"]
    ci_excludes_zero = c["ci_low"] is not None and (c["ci_low"] > 0 or c["ci_high"] < 0)
    seed_range = spread["range"] if spread and seeds > 1 else None
    beyond_seeds = seed_range is not None and abs(diff) > seed_range
    if ci_excludes_zero and beyond_seeds:
        claim = "a > b" if diff > 0 else "a < b"
    elif ci_excludes_zero and seed_range is None:
        claim = ("a > b" if diff > 0 else "a < b") + " (one seed: the between-seed spread is unknown)"
    else:
        claim = "no difference shown"
    return {
        "scope": scope,
        "difference": diff,
        "ci_excludes_zero": ci_excludes_zero,
        "seed_range": seed_range,
        "exceeds_seed_range": beyond_seeds,
        "claim": claim,
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


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _num(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(summary: dict) -> str:
    tasks, models, base = summary["tasks"], summary["models"], summary["baseline"]
    titles = [EVAL_TASK_TITLES.get(t, t) for t in tasks]
    has_size = any("parameters" in m for m in models.values())
    has_spec = any("speculate" in m for m in models.values())
    lines = [
        "# Recovery of the pruned models",
        "",
        f"Scores in % (± stderr), baseline `{base}`. Recovery = average / average({base}); chance-normalised "
        "recovery = (average - chance) / (average(base) - chance), with chance the expected score of "
        "uniform guessing (so a model reduced to guessing gets 0%). Recovery above chance: the same over "
        f"the tasks `{base}` scores at least 2 stderr above chance on "
        f"({', '.join(summary.get('above_chance_tasks', [])) or 'none'}), where a difference can show.",
        "",
        "A run sized like the default demo (a few items per task, a few training steps) shows that the pipeline "
        "works, not which method recovers more: the CI and the verdict lines below say whether a difference is "
        "shown. The study that decides SDD vs SFT at CPU scale is reports/studies/smollm2-135m.md.",
        "",
    ]
    head = [
        "model",
        *titles,
        "average",
        "recovery",
        "recovery (chance-norm.)",
        "recovery above chance (chance-norm.)",
        "KL(base‖model)",
        "top-1 agree",
        "ppl on base text",
    ]
    if has_size:
        head += ["params (M)", "GFLOPs/token"]
    if has_spec:
        head += ["draft acceptance", "accepted length", "speedup"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in models.items():
        cells = [f"`{name}`"] + [
            f"{100 * m['tasks'][t]['score']:.1f} ± {100 * m['tasks'][t]['stderr']:.1f}" for t in tasks
        ]
        cells += [
            f"{100 * m['average']:.1f}",
            _pct(m["recovery"]),
            _pct(m["recovery_chance_normalised"]),
            _pct(m.get("recovery_cn_above_chance")),
            _num(m["fidelity"]["kl"]),
            _pct(m["fidelity"]["top1_agreement"]),
            _num(m["fidelity"]["perplexity"], 2),
        ]
        if has_size:
            cells += [_num(m.get("parameters", math.nan) / 1e6, 1), _num(m.get("flops_per_token", math.nan) / 1e9, 3)]
        if has_spec:
            spec = m.get("speculate") or {}
            cells += [
                _pct(spec.get("acceptance_rate", math.nan)),
                _num(spec.get("mean_accepted_length", math.nan), 2),
                _num(spec.get("speedup", math.nan), 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if has_size:
        lines += [
            "",
            "params: unique parameters from each model's config.json (a tied embedding / LM head counted once); "
            "GFLOPs/token: forward matmul FLOPs, 2 × (decoder-layer weights + LM head) + 2 n_layer n_ctx d_attn "
            f"with n_ctx = {summary['flops_context']} (the embedding is a lookup; Kaplan et al. 2020, Table 1).",
        ]
    lines += [
        "",
        "## Per-task recovery (raw / chance-normalised)",
        "",
        "| model | " + " | ".join(titles) + " |",
        "|" + "---|" * (len(tasks) + 1),
    ]
    for name, m in models.items():
        cells = []
        for t in tasks:
            r = m["tasks"][t]
            mark = "†" if r["base_near_chance"] else ""
            cells.append(f"{_pct(r['recovery'])} / {_pct(r['recovery_chance_normalised'])}{mark}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "† the baseline is within 2 stderr of chance on this task (chance: "
        + ", ".join(f"{EVAL_TASK_TITLES.get(t, t)} {100 * c:.1f}%" for t, c in summary["chance"].items())
        + "): its chance-normalised ratio is noise.",
        "",
    ]
    if summary["comparisons"]:
        lines += _comparison_lines(summary["comparisons"])
    if summary.get("layer_selection"):
        lines += _layer_selection_lines(summary["layer_selection"])
    if summary["prune"]:
        p = summary["prune"]
        lines += [
            f"Pruning removed layers {p.get('removed_layers')}: {_num(p.get('params_reduction_pct'), 1)}% fewer "
            f"(unique) parameters, {_num(p.get('flops_reduction_pct'), 1)}% fewer forward FLOPs per token.",
            "",
        ]
    s = summary["settings"]
    lines += [
        "## Settings",
        "",
        f"lm-eval {s['lm_eval_version']}, backend `{s['backend']}`, {s['dtype']}, batch {s['batch_size']}, "
        f"chat template {'on' if s['chat_template'] else 'off'}, seed {s['seed']}, data "
        f"{'mirror ' + s['mirror'] if s.get('mirror') else 'hub'}.",
        "",
        "| task | shots | limit | few-shot split |",
        "|---|---|---|---|",
    ]
    for t in tasks:
        lines.append(f"| {EVAL_TASK_TITLES.get(t, t)} | {s['shots'][t]} | {s['limit'][t]} | {s['fewshot_split'][t]} |")
    return "\n".join(lines) + "\n"


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


def _comparison_lines(comparisons: dict) -> list[str]:
    lines = [
        "## Paired bootstrap of the difference in average score",
        "",
        f"Each task is resampled on its own: items within each subtask when every subtask has at least "
        f"{stats.MIN_RESAMPLE_ITEMS} paired items, else the task's items jointly with their subtask weights; "
        f"a task with fewer than {stats.MIN_RESAMPLE_ITEMS} paired items leaves the CI not available (resampling "
        "fewer items understates the variance: none with 1 item, half with 2).",
        "",
    ]
    for pair, c in comparisons.items():
        a, b = pair.split("-", 1)
        if c["ci_low"] is None:
            ci = f"{100 * c['confidence']:.0f}% CI not available ({c['ci_unavailable']})"
        else:
            ci = f"{100 * c['confidence']:.0f}% CI [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]"
        pooled = sorted(t for t, by in c["resampled_by"].items() if by == "task")
        lines.append(
            f"- `{a}` − `{b}`: {100 * c['difference']:+.2f} points, {ci} ({c['paired_items']} paired items, "
            f"{c['unpaired_items']} unpaired, {c['iterations']} resamples"
            + (f"; resampled by task: {', '.join(pooled)})" if pooled else ")")
        )
        if "above_chance" in c:
            above = c["above_chance"]
            tasks = ", ".join(sorted(above["resampled_by"]))
            if above["ci_low"] is None:
                ci = f"CI not available ({above['ci_unavailable']})"
            else:
                ci = (
                    f"{100 * above['confidence']:.0f}% CI [{100 * above['ci_low']:+.2f}, {100 * above['ci_high']:+.2f}]"
                )
            diff = f"{100 * above['difference']:+.2f} points"
            lines.append(f"  - over the tasks the baseline is above chance on ({tasks}): {diff}, {ci}")
        lines += _seed_and_fidelity_lines(c)
    return lines + [""]


def _seed_and_fidelity_lines(c: dict) -> list[str]:
    lines = []
    seeds = c.get("seeds", {})
    if any(len(g) > 1 for g in seeds.values()):
        lines.append(f"  - seed-averaged per item: `{'`, `'.join(seeds['a'])}` vs `{'`, `'.join(seeds['b'])}`")
    for key, label in (("average", "average"), ("average_above_chance", "above-chance average")):
        spread = c.get("seed_spread", {}).get(key)
        if spread and max(len(spread["a"]), len(spread["b"])) > 1:
            per_seed = ", ".join(f"{100 * d:+.2f}" for d in spread["per_seed_differences"])
            lines.append(
                f"  - between seeds, {label}: a {', '.join(f'{100 * v:.2f}' for v in spread['a'])}; b "
                f"{', '.join(f'{100 * v:.2f}' for v in spread['b'])} (largest range {100 * spread['range']:.2f} "
                f"points; a − b seed by seed: {per_seed})"
            )
    fid = c.get("fidelity")
    if fid:
        cells = []
        for metric, label, scale, digits in (
            ("kl", "KL", 1, 4),
            ("top1_agreement", "top-1 agreement (points)", 100, 2),
            ("perplexity", "perplexity", 1, 3),
        ):
            f = fid[metric]
            ci = (
                f"[{scale * f['ci_low']:+.{digits}f}, {scale * f['ci_high']:+.{digits}f}]"
                if f["ci_low"] is not None
                else f"(CI not available: {f['ci_unavailable']})"
            )
            cells.append(f"{label} {scale * f['difference']:+.{digits}f} {ci}")
        lines.append(f"  - fidelity, a − b over {fid['kl']['prompts']} paired prompts (95% CI): " + "; ".join(cells))
    v = c.get("verdict")
    if v:
        scope = "above-chance average" if v["scope"] == "above_chance" else "average"
        lines.append(
            f"  - **verdict ({scope})**: {v['claim']} (CI excludes 0: {'yes' if v['ci_excludes_zero'] else 'no'}; "
            + (
                f"|difference| {'>' if v['exceeds_seed_range'] else '<='} between-seed range "
                f"{100 * v['seed_range']:.2f} points)"
                if v["seed_range"] is not None
                else "between-seed range unknown: one seed)"
            )
        )
    return lines


def _layer_selection_lines(sel: dict) -> list[str]:
    n, k = sel["n_layers"], sel["candidates"]
    lines = [
        f"## Layer selection (n = {n})",
        "",
        f"The block each `layer_scores` metric would cut (`{sel['metric']}` chose; "
        f"angular_last_token reads the `{sel['token']}` token). KL(base ‖ cut) and top-1 agreement are "
        f"measured on the calibration set; ρ is the Spearman rank correlation of the metric with that KL "
        f"over the {k} measured candidate blocks (1 = the metric ranks blocks exactly as fidelity does).",
        "",
    ]
    if k:
        lines += ["| metric | layers cut | KL(base ‖ cut) | top-1 agree | ρ with KL |", "|---|---|---|---|---|"]
    else:
        lines += ["| metric | layers cut |", "|---|---|"]
    for metric, row in sel["chosen_by"].items():
        mark = " (used)" if metric == sel["metric"] else ""
        cells = [f"`{metric}`{mark}", f"{row['layers'][0]}–{row['layers'][1]}"]
        if k:
            rho = row.get("rank_correlation")
            cells += [_num(row["kl"]), _pct(row["top1"]), "—" if metric == "kl_to_base" else _num(rho, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


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
            "recovery": _round_pct(m["recovery"]),
            "recovery_chance_normalised": _round_pct(m["recovery_chance_normalised"]),
            "kl": _round(m["fidelity"]["kl"], 4),
            "top1_agreement": _round_pct(m["fidelity"]["top1_agreement"]),
        }
        for n, m in summary["models"].items()
        if n != summary["baseline"]
    ]


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


def _round_pct(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(100 * x, 2)


def plot_rows(summary: dict) -> tuple[list[dict], list[dict]]:
    """Rows for `dvc plots`: recovery per model, and score per (model, task)."""
    rec = [
        {
            "model": n,
            "recovery": round(100 * m["recovery"], 2),
            "recovery_chance_normalised": round(100 * m["recovery_chance_normalised"], 2),
        }
        for n, m in summary["models"].items()
    ]
    per_task = [
        {"model": n, "task": t, "score": round(100 * m["tasks"][t]["score"], 2)}
        for n, m in summary["models"].items()
        for t in summary["tasks"]
    ]
    return rec, per_task


def headline(summary: dict) -> dict:
    """The report's declared metrics: per model average, recovery (raw and chance-normalised), KL
    and speculative acceptance; per comparison the difference and its CI."""
    models = {
        n: {
            "average": _round(m["average"], 4),
            "recovery": _round(m["recovery"], 4),
            "recovery_cn": _round(m["recovery_chance_normalised"], 4),
            "kl": _round(m["fidelity"]["kl"], 4),
            **({"acceptance": _round(m["speculate"]["acceptance_rate"], 4)} if m.get("speculate") else {}),
        }
        for n, m in summary["models"].items()
    }
    return {
        **models,
        **{
            pair: {
                **{k: _round(v, 4) for k, v in c.items() if k in ("difference", "ci_low", "ci_high")},
                **{
                    f"above_chance_{k}": _round(c["above_chance"][k], 4)
                    for k in ("difference", "ci_low", "ci_high")
                    if "above_chance" in c
                },
                **{
                    f"kl_{k}": _round(c["fidelity"]["kl"][k], 4)
                    for k in ("difference", "ci_low", "ci_high")
                    if "fidelity" in c
                },
                **({"seed_range": _round(c["verdict"]["seed_range"], 4)} if c.get("verdict") else {}),
            }
            for pair, c in summary["comparisons"].items()
        },
    }
