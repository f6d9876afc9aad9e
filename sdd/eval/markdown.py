"""The recovery report as Markdown, section by section, from `sdd.eval.report.summarise`'s dict.

text = markdown(summary)        # reports/recovery.md
"""

from __future__ import annotations

import math

from sdd.eval import stats
from sdd.eval.fmt import diff_ci, num, pct
from sdd.eval.tasks import TITLES

MEASURE_TITLES = {"gold_nll": "gold NLL", "plain_kl": "plain-text KL", "plain_nll": "plain-text NLL"}


def markdown(summary: dict) -> str:
    lines = intro(summary)
    lines += accuracy_table(summary)
    lines += measures_table(summary)
    lines += size_table(summary)
    lines += per_task_table(summary)
    if summary["comparisons"]:
        lines += comparison_table(summary["comparisons"])
    if summary.get("layer_selection"):
        lines += layer_selection_lines(summary["layer_selection"])
    lines += settings_lines(summary)
    return "\n".join(lines) + "\n"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows), ""]


def intro(summary: dict) -> list[str]:
    base, above = summary["baseline"], summary.get("above_chance_tasks") or []
    return [
        "# Recovery of the pruned models",
        "",
        f"Scores in % (± stderr), baseline `{base}`. Recovery = average / average({base}); chance-normalised "
        "recovery = (average - chance) / (average(base) - chance), so a model reduced to guessing gets 0%. "
        f"Above chance: the tasks `{base}` scores at least 2 stderr above chance on "
        f"({', '.join(above) or 'none'}), where a difference can show. Margin: the right choice's "
        "log-likelihood minus the best other choice's, per multiple-choice item (> 0 when the item is right).",
        "",
        "The held-out measures are per token and more precise than accuracy at any size: gold NLL on held-out "
        "gold responses (in-distribution quality, lower is better), KL(base ‖ model) in the chat format on the "
        "base's own continuations and on plain, non-chat text (forgetting, lower is better).",
        "",
    ]


def accuracy_table(summary: dict) -> list[str]:
    tasks, models = summary["tasks"], summary["models"]
    head = ["model", *(TITLES.get(t, t) for t in tasks), "average", "recovery", "recovery (chance-norm.)"]
    head += ["recovery above chance (chance-norm.)", "margin"]
    rows = []
    for name, m in models.items():
        cells = [f"`{name}`"] + [score_cell(m["tasks"][t]) for t in tasks]
        cells += [f"{100 * m['average']:.1f}", pct(m["recovery"]), pct(m["recovery_chance_normalised"])]
        cells += [pct(m.get("recovery_cn_above_chance")), num(m.get("margin"))]
        rows.append(cells)
    return ["## Accuracy", "", *table(head, rows)]


def score_cell(task: dict) -> str:
    """A task's score ± stderr in %."""
    return f"{100 * task['score']:.1f} ± {100 * task['stderr']:.1f}"


def measures_table(summary: dict) -> list[str]:
    head = ["model", "KL(base ‖ model), chat", "top-1 agreement", "perplexity on base text"]
    head += [MEASURE_TITLES[m] for m in MEASURE_TITLES]
    rows = []
    for name, m in summary["models"].items():
        f, held = m["fidelity"], m.get("measures", {})
        cells = [f"`{name}`", num(f["kl"]), pct(f["top1_agreement"]), num(f["perplexity"], 2)]
        rows.append(cells + [num(held.get(k)) for k in MEASURE_TITLES])
    return ["## Fidelity and held-out measures (per token)", "", *table(head, rows)]


def size_table(summary: dict) -> list[str]:
    models = summary["models"]
    if not any("parameters" in m or "speculate" in m for m in models.values()):
        return []
    head = ["model", "params (M)", "GFLOPs/token", "draft acceptance", "accepted length", "speedup"]
    rows = []
    for name, m in models.items():
        spec = m.get("speculate") or {}
        cells = [
            f"`{name}`",
            num(m.get("parameters", math.nan) / 1e6, 1),
            num(m.get("flops_per_token", math.nan) / 1e9),
        ]
        cells += [
            pct(spec.get("acceptance_rate")),
            num(spec.get("mean_accepted_length"), 2),
            num(spec.get("speedup"), 2),
        ]
        rows.append(cells)
    note = (
        "params: unique parameters from each model's config.json (a tied embedding / LM head counted once); "
        "GFLOPs/token: forward matmul FLOPs, 2 × (decoder-layer weights + LM head) + 2 n_layer n_ctx d_attn "
        f"with n_ctx = {summary['flops_context']} (Kaplan et al. 2020, Table 1). Draft acceptance: vLLM speculative "
        "decoding with the model as the draft of the base (a model not used as a draft: n/a)."
    )
    lines = ["## Size and speculative decoding", "", *table(head, rows), note, ""]
    if summary["prune"]:
        p = summary["prune"]
        lines += [
            f"Pruning removed layers {p.get('removed_layers')}: {num(p.get('params_reduction_pct'), 1)}% fewer "
            f"(unique) parameters, {num(p.get('flops_reduction_pct'), 1)}% fewer forward FLOPs per token.",
            "",
        ]
    return lines


def per_task_table(summary: dict) -> list[str]:
    tasks = summary["tasks"]
    rows = []
    for name, m in summary["models"].items():
        cells = [f"`{name}`"]
        for t in tasks:
            r = m["tasks"][t]
            cells.append(
                f"{pct(r['recovery'])} / {pct(r['recovery_chance_normalised'])}{'†' if r['base_near_chance'] else ''}"
            )
        rows.append(cells)
    chance = ", ".join(f"{TITLES.get(t, t)} {100 * c:.1f}%" for t, c in summary["chance"].items())
    return [
        "## Per-task recovery (raw / chance-normalised)",
        "",
        *table(["model", *(TITLES.get(t, t) for t in tasks)], rows),
        f"† the baseline is within 2 stderr of chance on this task (chance: {chance}): its chance-normalised ratio "
        "is noise.",
        "",
    ]


def comparison_table(comparisons: dict) -> list[str]:
    """Every comparison a − b: each measure's difference with its 95% CI over seeds and items, the verdicts."""
    head = ["a − b", "seeds (a; b)", "Δ average", "Δ above-chance average", "Δ margin", "Δ KL (chat)"]
    head += [f"Δ {MEASURE_TITLES[m]}" for m in MEASURE_TITLES] + ["verdict (accuracy)", "verdict (margin)"]
    rows = []
    for c in comparisons.values():
        fid, held, v = c.get("fidelity", {}), c.get("measures", {}), c["verdict"]
        a, b = c["seeds"]["a"], c["seeds"]["b"]  # each side's first name is the model, then its replicates
        cells = [f"`{a[0]}` − `{b[0]}`", f"{', '.join(a)}; {', '.join(b)}"]
        cells += [
            diff_ci(c),
            diff_ci(c.get("above_chance")),
            diff_ci(c.get("margin"), 1.0, 3),
            diff_ci(fid.get("kl"), 1.0, 4),
        ]
        cells += [diff_ci(held.get(m), 1.0, 4) for m in MEASURE_TITLES]
        rows.append(cells + [v["claim"], v["margin_claim"]])
    note = (
        "Differences in points (accuracy) or per token (margin, KL, NLL), each with its 95% CI. A side with several "
        "seeds is the recipe, averaged per item, and its CI resamples the seeds, then the items "
        "(sdd.eval.stats.hierarchical_bootstrap; conservative: in simulation it covered a known difference in "
        "99 of 100 studies); with one model a side, the items. A task with fewer than "
        f"{stats.MIN_RESAMPLE_ITEMS} items leaves its CI out. A verdict claims a difference only where the CI "
        "excludes 0."
    )
    return ["## Comparisons", "", note, "", *table(head, rows)]


def layer_selection_lines(sel: dict) -> list[str]:
    n, k = sel["n_layers"], sel["candidates"]
    lines = [
        f"## Layer selection (n = {n})",
        "",
        f"The block each `layer_scores` metric would cut (`{sel['metric']}` chose; angular_last_token reads the "
        f"`{sel['token']}` token). KL(base ‖ cut) and top-1 agreement are measured on the calibration set; ρ is the "
        f"Spearman rank correlation of the metric with that KL over the {k} measured candidate blocks.",
        "",
    ]
    head = ["metric", "layers cut", "KL(base ‖ cut)", "top-1 agree", "ρ with KL"] if k else ["metric", "layers cut"]
    rows = []
    for metric, row in sel["chosen_by"].items():
        cells = [f"`{metric}`{' (used)' if metric == sel['metric'] else ''}", f"{row['layers'][0]}–{row['layers'][1]}"]
        if k:
            rho = row.get("rank_correlation")
            cells += [num(row["kl"]), pct(row["top1"]), "—" if metric == "kl_to_base" else num(rho, 2)]
        rows.append(cells)
    return lines + table(head, rows)


def settings_lines(summary: dict) -> list[str]:
    s = summary["settings"]
    device = (s.get("precision") or {}).get("device", {})
    where = (
        f"{device.get('name', '?')} ({', '.join(device.get('flags', [])) or 'no ISA flags recorded'})"
        if device
        else "?"
    )
    lines = [
        "## Settings",
        "",
        f"lm-eval {s['lm_eval_version']}, backend `{s['backend']}`, {s['dtype']} on {where}, batch {s['batch_size']}, "
        f"chat template {'on' if s['chat_template'] else 'off'}, seed {s['seed']}, data {s.get('data', 'mirror')}.",
        "",
    ]
    rows = [
        [TITLES.get(t, t), str(s["shots"][t]), str(s["limit"][t]), str(s["fewshot_split"][t])] for t in summary["tasks"]
    ]
    return lines + table(["task", "shots", "limit", "few-shot split"], rows)
