"""The study report: one finished run of a study preset, written up with its figures.

    python -m sdd.study --preset presets/smollm2-study.yaml --log run.log [--log more.log] \\
        --out reports/studies/smollm2-135m.md --command "dvc exp run -n smollm2-study ..."

Reads the run's outputs in the working tree (the report's comparisons, each stage's metrics, the
distilled data) and the logs of the `dvc exp run` calls (each stage logs "<stage> done: ...
seconds=N"), and writes the Markdown report plus static SVG figures beside it (rendered offline from
Vega-Lite specs, sdd.plots): recovery per model with its CI, KL per model with its CI. Every number
comes from the artifacts; nothing is typed in.

A follow-up run with other params adds `--against <earlier run's tree> --across sdd [--across ...]`:
each named model against itself in the earlier run, paired over the same items and prompts.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from sdd.artifacts import read_json, read_parquet
from sdd.config import Params, load_params
from sdd.config.models import replicate_groups
from sdd.data.schemas import EVAL_SAMPLES
from sdd.errors import InputError
from sdd.eval.per_prompt import FIDELITY_PER_PROMPT, per_prompt_file
from sdd.eval.report import compare_models
from sdd.plots import to_svg

DONE = re.compile(r"^\S+ \S+ sdd INFO (\S+) done: .*seconds=([\d.]+)", re.M)


def stage_seconds(logs: list[str]) -> dict[str, float]:
    """Wall seconds per stage from the stage logs (the last run of a stage wins: a resumed stage
    reports the time of the run that finished it)."""
    out: dict[str, float] = {}
    for text in logs:
        for stage, seconds in DONE.findall(text):
            out[stage] = float(seconds)
    return out


def recovery_ci(
    model: pd.DataFrame, base: pd.DataFrame, tasks: list[str], iterations: int, seed: int
) -> tuple[float, float, float]:
    """Recovery over `tasks` (mean of task means, model / base) with a paired percentile 95% CI:
    items resampled within each task, the same draw for model and base (single-subtask tasks)."""
    keys = ["task", "subtask", "doc_id"]
    joined = model[keys + ["score"]].merge(base[keys + ["score"]], on=keys, suffixes=("_m", "_b"))
    joined = joined[joined["task"].isin(tasks)]
    rng = np.random.default_rng(seed)
    num, den = np.zeros(iterations), np.zeros(iterations)
    observed_num, observed_den = 0.0, 0.0
    for _, rows in joined.groupby("task"):
        m, b = rows["score_m"].to_numpy(), rows["score_b"].to_numpy()
        picks = rng.integers(0, len(m), size=(iterations, len(m)))
        num += m[picks].mean(axis=1)
        den += b[picks].mean(axis=1)
        observed_num, observed_den = observed_num + m.mean(), observed_den + b.mean()
    low, high = np.quantile(num / den, [0.025, 0.975])
    return observed_num / observed_den, float(low), float(high)


def kl_ci(frame: pd.DataFrame, iterations: int, seed: int) -> tuple[float, float, float]:
    """A model's token-weighted KL to the base with a percentile 95% CI over prompts."""
    kl, tokens = frame["kl_sum"].to_numpy(), frame["tokens"].to_numpy()
    picks = np.random.default_rng(seed).integers(0, len(kl), size=(iterations, len(kl)))
    low, high = np.quantile(kl[picks].sum(axis=1) / tokens[picks].sum(axis=1), [0.025, 0.975])
    return kl.sum() / tokens.sum(), float(low), float(high)


def interval_chart(rows: list[dict], value: str, title: str, reference: float | None = None) -> dict:
    """Vega-Lite: one point with its CI bar per model (rows: model, value, low, high)."""
    axis = {"field": value, "type": "quantitative", "title": title, "scale": {"zero": False}}
    layers: list[dict] = [
        {
            "mark": {"type": "rule", "strokeWidth": 2},
            "encoding": {"y": {"field": "model", "type": "nominal", "sort": None}, "x": {**axis, "field": "low"}}
            | {"x2": {"field": "high"}},
        },
        {
            "mark": {"type": "point", "filled": True, "size": 80},
            "encoding": {"y": {"field": "model", "type": "nominal", "sort": None, "title": None}, "x": axis},
        },
    ]
    if reference is not None:
        layers.append({"data": {"values": [{"r": reference}]}, "mark": {"type": "rule", "strokeDash": [4, 4]}})
        layers[-1]["encoding"] = {"x": {"field": "r", "type": "quantitative"}}
    return {"width": 420, "height": 24 * len(rows), "data": {"values": rows}, "layer": layers}


def distilled_share(params: Params) -> tuple[dict, dict]:
    """(per dataset: kept share and fallback reasons from distill's metrics; per arm: the share of
    its training rows whose response is a self-distilled rewrite)."""
    from sdd.model.trainer import read_arm

    per_dataset = {}
    for ds in params.distill.datasets:
        m = read_json(params.paths.metrics_file("distill", ds))
        per_dataset[ds] = {k: m.get(k) for k in ("rows", "kept_distilled", "kept_distilled_fraction")}
        per_dataset[ds] |= {"fallbacks": m.get("fallbacks_by_reason"), "ended": m.get("ended_at_answer_line")}
    per_arm = {}
    ft = params.finetune
    for arm, spec in ft.arms.items():
        train, _, _ = read_arm(params.paths, spec.data, ft.val_fraction, ft.seed)
        kept = sum(1 for r in train if r.get("selected") == "distilled")
        per_arm[arm] = {"train_rows": len(train), "distilled_rows": kept, "share": kept / len(train)}
    return per_dataset, per_arm


def across_runs(previous: Path, names: list[str], params: Params, report: dict) -> dict:
    """Each model of `names` in this run minus the same model in an earlier run of the study with
    other params (`previous`: that run's working tree, or a copy of its `paths.eval` and
    `paths.metrics` folders), paired over the same items and fidelity prompts and seed-averaged over
    `report.replicates`, as the run's own comparisons are (sdd.eval.report.compare_models)."""
    paths, settings, groups = params.paths, params.report, replicate_groups(params)
    earlier = read_json(previous / paths.metrics_file("report"))
    samples, fidelity, models, replicates = {}, {}, {}, {}
    for tag, root, summary in (("this run", Path("."), report), ("earlier", previous, earlier)):
        for name in names:
            group = [name, *groups.get(name, [])]
            replicates[f"{name} ({tag})"] = [f"{m} ({tag})" for m in group[1:]]
            for m in group:
                where = f"evaluate@{m} ({tag}, {root})"
                samples[f"{m} ({tag})"] = read_parquet(root / paths.eval_samples_file(m), EVAL_SAMPLES, where)
                fidelity[f"{m} ({tag})"] = read_parquet(
                    per_prompt_file(root / paths.eval, m), FIDELITY_PER_PROMPT, where
                )
                if m not in summary["models"]:
                    raise InputError(
                        f"{root / paths.metrics_file('report')} has no model {m!r}: "
                        "--across names a model both runs evaluated"
                    )
                models[f"{m} ({tag})"] = summary["models"][m]
    above = report["above_chance_tasks"]
    return {
        f"{n} (this run) - {n} (earlier)": compare_models(
            f"{n} (this run)",
            f"{n} (earlier)",
            models,
            samples,
            fidelity,
            replicates,
            above,
            settings.bootstrap,
            settings.confidence,
            settings.seed,
        )
        for n in names
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, no GPU"


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def write(args: argparse.Namespace) -> Path:
    params = load_params()
    paths = params.paths
    out = Path(args.out)
    figures = out.parent / out.stem
    figures.mkdir(parents=True, exist_ok=True)
    report = read_json(paths.metrics_file("report"))
    models, above = report["models"], report["above_chance_tasks"]
    samples = {m: read_parquet(paths.eval_samples_file(m), EVAL_SAMPLES, f"evaluate@{m}") for m in models}
    fid = {m: read_parquet(per_prompt_file(paths.eval, m), FIDELITY_PER_PROMPT, f"evaluate@{m}") for m in models}
    base = params.report.baseline
    rec_rows, kl_rows = [], []
    for i, m in enumerate(models):
        value, low, high = recovery_ci(samples[m], samples[base], above, args.bootstrap, i)
        rec_rows.append({"model": m, "recovery": 100 * value, "low": 100 * low, "high": 100 * high})
        if m != base:
            k, klow, khigh = kl_ci(fid[m], args.bootstrap, i)
            kl_rows.append({"model": m, "kl": k, "low": klow, "high": khigh})
    rec_title = f"recovery over the above-chance tasks ({', '.join(above)}), % of {base}"
    (figures / "recovery.svg").write_text(to_svg(interval_chart(rec_rows, "recovery", rec_title, 100.0)))
    (figures / "kl.svg").write_text(to_svg(interval_chart(kl_rows, "kl", f"KL({base} ‖ model) per token")))
    per_dataset, per_arm = distilled_share(params)
    seconds = stage_seconds([Path(p).read_text(errors="replace") for p in args.log])
    finetune = {a: read_json(paths.metrics_file("finetune", a)) for a in params.finetune.arms}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    text = render(args, params, report, rec_rows, kl_rows, per_dataset, per_arm, seconds, finetune, commit, figures)
    if args.against:
        note = f"The same models in the earlier run (`{args.against}`), this run minus that one."
        table = comparison_table(across_runs(Path(args.against), args.across, params, report))
        text += "\n".join(["", "## Against the earlier run", "", note, "", *table[2:]])
    out.write_text(text, encoding="utf-8")
    return out


def render(args, params, report, rec_rows, kl_rows, per_dataset, per_arm, seconds, finetune, commit, figures) -> str:  # noqa: PLR0913
    models, comparisons, above = report["models"], report["comparisons"], report["above_chance_tasks"]
    tasks = list(next(iter(models.values()))["tasks"])
    rec = {r["model"]: r for r in rec_rows}
    kls = {r["model"]: r for r in kl_rows}
    lines = [f"# {args.title}", "", args.summary or "", ""]
    lines += ["## Results", "", f"Scores in % (± stderr). Above-chance tasks: {', '.join(above)}.", ""]
    head = [
        "model",
        *tasks,
        "average",
        "above-chance avg",
        "recovery above chance (95% CI)",
        "chance-norm.",
        "KL (95% CI)",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, row in models.items():
        r, k = rec[m], kls.get(m)
        cells = [f"`{m}`", *(f"{_pct(row['tasks'][t]['score'])} ± {_pct(row['tasks'][t]['stderr'])}" for t in tasks)]
        cells += [_pct(row["average"]), _pct(row.get("average_above_chance"))]
        cells += [f"{r['recovery']:.1f} [{r['low']:.1f}, {r['high']:.1f}]", _pct(row.get("recovery_cn_above_chance"))]
        cells += [f"{k['kl']:.4f} [{k['low']:.4f}, {k['high']:.4f}]" if k else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![recovery]({figures.name}/recovery.svg)", "", f"![KL]({figures.name}/kl.svg)", ""]
    lines += comparison_table(comparisons)
    lines += ["## Distilled share", "", "| dataset | rows | kept rewrites | share | fallbacks (reason: rows) |"]
    lines += ["|---|---|---|---|---|"]
    for ds, d in per_dataset.items():
        lines.append(
            f"| {ds} | {d['rows']} | {d['kept_distilled']} | {_pct(d['kept_distilled_fraction'])}% | {d['fallbacks']} |"
        )
    lines += ["", "| arm | training rows | distilled rows | share |", "|---|---|---|---|"]
    lines += [
        f"| `{a}` | {v['train_rows']} | {v['distilled_rows']} | {_pct(v['share'])}% |" for a, v in per_arm.items()
    ]
    lines += ["", "## Training budgets", "", "| arm | seed | steps | epochs | rows | tokens seen | val loss | wall s |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for a, f in finetune.items():
        lines.append(
            f"| `{a}` | {f.get('seed')} | {f['steps']} | {f['epochs']} | {f['train_rows']} | {f['tokens_seen']:,} | "
            f"{f['val_loss']} | {f['wall_seconds']} |"
        )
    total = sum(seconds.values())
    lines += ["", f"## Wall time per stage ({total / 3600:.2f} h in all)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {v:.0f} |" for s, v in seconds.items()]
    preset = Path(args.preset).read_text()
    lines += [
        "",
        "## How it was run",
        "",
        f"- machine: {machine()}",
        f"- commit: `{commit}`",
        f"- command: `{args.command}`",
    ]
    lines += ["- params that differ from `params.yaml` (the preset):", "", "```yaml", preset.strip(), "```", ""]
    return "\n".join(lines) + "\n"


def _ci(c: dict | None, scale: float = 100.0, digits: int = 2) -> str:
    """ "difference [low, high]" of one bootstrap result, in points (x100) or raw."""
    if not c:
        return "—"
    low, high = c.get("ci_low"), c.get("ci_high")
    ci = "no CI" if low is None or high is None else f"[{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"
    return f"{scale * c['difference']:+.{digits}f} {ci}"


def comparison_table(comparisons: dict) -> list[str]:
    """Every report.compare pair: the paired 95% CIs (items, prompts), the seeds behind each side,
    the difference seed by seed and the between-seed range, and the verdict."""
    head = ["a − b", "seeds (a; b)", "Δ average, points", "Δ above-chance average, points"]
    head += ["Δ above-chance, seed by seed", "between-seed range", "Δ KL", "Δ top-1 agreement, points"]
    head += ["Δ perplexity", "verdict"]
    note = "Paired bootstrap, 95% CI, items (or prompts) resampled; replicates averaged per item."
    lines = ["## Comparisons", "", note, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pair, c in comparisons.items():
        fid = c.get("fidelity", {})
        spread = c.get("seed_spread", {}).get("average_above_chance") or {}
        per_seed = ", ".join(f"{100 * d:+.2f}" for d in spread.get("per_seed_differences", [])) or "—"
        cells = [f"`{pair}`", f"{', '.join(c['seeds']['a'])}; {', '.join(c['seeds']['b'])}"]
        cells += [_ci(c), _ci(c.get("above_chance")), per_seed]
        cells += [f"{100 * spread['range']:.2f}" if spread else "—", _ci(fid.get("kl"), 1.0, 4)]
        cells += [_ci(fid.get("top1_agreement")), _ci(fid.get("perplexity"), 1.0, 3), c["verdict"]["claim"]]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--log", action="append", default=[])
    parser.add_argument("--out", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--title", default="Study")
    parser.add_argument("--summary", default="")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--against", help="an earlier run's working tree: compare --across models with it")
    parser.add_argument("--across", action="append", default=[], help="a model both runs evaluated")
    args = parser.parse_args()
    if bool(args.against) != bool(args.across):
        parser.error("--against and --across go together: an earlier run's tree and the models to compare with it")
    print(write(args))


if __name__ == "__main__":
    main()
