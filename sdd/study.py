"""Study reports anyone can re-check: a finished run of a study preset, written up from data that is
committed beside the report, and a command that recomputes every figure from that data.

    python -m sdd.study write --preset presets/smollm2-recipe.yaml --log run.log [--log more.log] \\
        --out reports/studies/smollm2-135m-recipe.md --command "dvc exp run ..." [--title ... --summary ...]
    python -m sdd.study verify reports/studies/smollm2-135m-recipe

`write` copies what the report's numbers come from into the folder beside it (`<name>/`): every
model's per-item scores and margins (`samples.parquet`), per-prompt fidelity (`fidelity.parquet`),
per-row held-out measures (`measures.parquet`) and `run.json` (each model's evaluation metrics, the
comparisons and bootstrap settings, training budgets, distilled shares, stage times from the logs,
the machine, commit, command and preset); then renders the report from that folder alone, with
offline SVG figures. `verify` renders it again from the folder and fails on any difference with the
committed Markdown: every figure is recomputed from committed data, nothing is typed in.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sdd.artifacts import read_json, read_parquet, write_json
from sdd.config import Params, load_params, models
from sdd.data.schemas import EVAL_SAMPLES
from sdd.eval import markdown as md
from sdd.eval.compare import Evaluated
from sdd.eval.fmt import num, pct, value_ci
from sdd.eval.measures import MEASURE_ROWS, measures_file
from sdd.eval.per_prompt import FIDELITY_PER_PROMPT, per_prompt_file
from sdd.eval.report import ReportInputs, summarise
from sdd.plots import to_svg

DONE = re.compile(r"^\S+ \S+ sdd INFO (\S+) done: .*seconds=([\d.]+)", re.M)
FRAMES = {"samples": EVAL_SAMPLES, "fidelity": FIDELITY_PER_PROMPT, "measures": MEASURE_ROWS}


def stage_seconds(logs: list[str]) -> dict[str, float]:
    """Seconds per stage from the stage logs (the last run of a stage wins: a resumed stage reports
    the time of the run that finished it)."""
    out: dict[str, float] = {}
    for text in logs:
        for stage, seconds in DONE.findall(text):
            out[stage] = float(seconds)
    return out


def machine() -> dict:
    import os

    from sdd.hardware import detect

    device = detect()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "device": device.name, "flags": list(device.flags), "ram_gib": round(mem)}


def distilled_share(params: Params) -> tuple[dict, dict]:
    """(per dataset: kept share and fallback reasons from distill's metrics; per arm: the share of
    its training rows whose response is a self-distilled rewrite)."""
    from sdd.model.recipe import read_arm

    per_dataset = {}
    for ds in params.distill.datasets:
        m = read_json(params.paths.metrics_file("distill", ds))
        per_dataset[ds] = {k: m.get(k) for k in ("rows", "kept_distilled", "kept_distilled_fraction")}
        per_dataset[ds]["fallbacks"] = m.get("fallbacks_by_reason")
    per_arm = {}
    ft = params.finetune
    for arm, spec in ft.arms.items():
        train, _, _ = read_arm(params.paths, spec.data, ft.val_fraction, ft.seed)
        kept = sum(1 for r in train if r.get("selected") == "distilled")
        per_arm[arm] = {"train_rows": len(train), "distilled_rows": kept, "share": kept / len(train)}
    return per_dataset, per_arm


TRAINING = ("seed", "steps", "epochs", "train_rows", "tokens_seen", "val_loss", "val_original_loss", "wall_seconds")


def collect(params: Params, args: argparse.Namespace, folder: Path) -> None:
    """Copy the run's per-item data and every input of the report into `folder`."""
    paths = params.paths
    names = models.evaluated(params)
    files = {
        "samples": lambda m: paths.eval_samples_file(m),
        "fidelity": lambda m: per_prompt_file(paths.eval, m),
        "measures": lambda m: measures_file(paths.eval, m),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for kind, schema in FRAMES.items():
        frames = [read_parquet(files[kind](m), schema, f"evaluate@{m}").assign(model=m) for m in names]
        pd.concat(frames, ignore_index=True).to_parquet(folder / f"{kind}.parquet", index=False)
    per_dataset, per_arm = distilled_share(params)
    finetune = {a: read_json(paths.metrics_file("finetune", a)) for a in params.finetune.arms}
    speculate = {
        f.stem: read_json(f)
        for f in sorted((Path(paths.metrics) / "speculate").glob("*.json"))
        if not f.name.endswith(".headline.json")
    }
    cfg = params.report
    run = {
        "title": args.title,
        "summary": args.summary,
        "command": args.command,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": machine(),
        "preset": Path(args.preset).read_text(encoding="utf-8"),
        "evals": {m: read_json(paths.metrics_file("evaluate", m)) for m in names},
        "report": {"baseline": cfg.baseline, "start": cfg.start, "pairs": models.comparisons(params)},
        "replicates": models.replicate_groups(params),
        "bootstrap": {"iterations": args.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed},
        "prune": read_json(paths.metrics_file("prune")),
        "speculate": {n: s for n, s in speculate.items() if not s.get("skipped")},
        "distilled": {"datasets": per_dataset, "arms": per_arm},
        "training": {a: {k: f.get(k) for k in TRAINING} for a, f in finetune.items()},
        "seconds": stage_seconds([Path(p).read_text(errors="replace") for p in args.log]),
    }
    write_json(folder / "run.json", run)


def load(folder: Path) -> tuple[dict, dict[str, Evaluated]]:
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    frames = {kind: pd.read_parquet(folder / f"{kind}.parquet") for kind in FRAMES}
    evaluated = {
        m: Evaluated(*(frames[k][frames[k]["model"] == m].drop(columns="model").reset_index(drop=True) for k in FRAMES))
        for m in run["evals"]
    }
    return run, evaluated


def recovery_ci(model: pd.DataFrame, base: pd.DataFrame, tasks: list[str], boot: dict) -> tuple[float, float, float]:
    """Recovery over `tasks` (mean of task means, model / base) with a paired percentile CI: items
    resampled within each task, the same draw for model and base."""
    keys = ["task", "subtask", "doc_id"]
    joined = model[keys + ["score"]].merge(base[keys + ["score"]], on=keys, suffixes=("_m", "_b"))
    joined = joined[joined["task"].isin(tasks)]
    rng = np.random.default_rng(boot["seed"])
    num_, den = np.zeros(boot["iterations"]), np.zeros(boot["iterations"])
    observed_num, observed_den = 0.0, 0.0
    for _, rows in joined.groupby("task"):
        m, b = rows["score_m"].to_numpy(), rows["score_b"].to_numpy()
        picks = rng.integers(0, len(m), size=(boot["iterations"], len(m)))
        num_ += m[picks].mean(axis=1)
        den += b[picks].mean(axis=1)
        observed_num, observed_den = observed_num + m.mean(), observed_den + b.mean()
    alpha = (1 - boot["confidence"]) / 2
    low, high = np.quantile(num_ / den, [alpha, 1 - alpha])
    return observed_num / observed_den, float(low), float(high)


def kl_ci(frame: pd.DataFrame, boot: dict) -> tuple[float, float, float]:
    """A model's token-weighted KL to the base with a percentile CI over prompts."""
    kl, tokens = frame["kl_sum"].to_numpy(), frame["tokens"].to_numpy()
    picks = np.random.default_rng(boot["seed"]).integers(0, len(kl), size=(boot["iterations"], len(kl)))
    alpha = (1 - boot["confidence"]) / 2
    low, high = np.quantile(kl[picks].sum(axis=1) / tokens[picks].sum(axis=1), [alpha, 1 - alpha])
    return kl.sum() / tokens.sum(), float(low), float(high)


def interval_chart(rows: list[dict], value: str, title: str, reference: float | None = None) -> dict:
    """Vega-Lite: one point with its CI bar per model (rows: model, value, low, high)."""
    axis = {"field": value, "type": "quantitative", "title": title, "scale": {"zero": False}}
    y = {"field": "model", "type": "nominal", "sort": None}
    layers: list[dict] = [
        {
            "mark": {"type": "rule", "strokeWidth": 2},
            "encoding": {"y": y, "x": {**axis, "field": "low"}, "x2": {"field": "high"}},
        },
        {"mark": {"type": "point", "filled": True, "size": 80}, "encoding": {"y": {**y, "title": None}, "x": axis}},
    ]
    if reference is not None:
        layers.append({"data": {"values": [{"r": reference}]}, "mark": {"type": "rule", "strokeDash": [4, 4]}})
        layers[-1]["encoding"] = {"x": {"field": "r", "type": "quantitative"}}
    return {"width": 420, "height": 24 * len(rows), "data": {"values": rows}, "layer": layers}


def render(folder: Path) -> tuple[str, dict[str, dict]]:
    """The report's Markdown and its figures' Vega-Lite specs, from the study folder alone."""
    run, evaluated = load(folder)
    r = run["report"]
    inputs = ReportInputs(prune=run["prune"], speculate=run["speculate"])
    pairs = [tuple(p) for p in r["pairs"]]
    summary = summarise(
        evaluated, run["evals"], r["baseline"], r["start"], pairs, run["replicates"], run["bootstrap"], inputs
    )
    base, above = r["baseline"], summary["above_chance_tasks"] or summary["tasks"]
    rows: list[dict[str, Any]] = []
    for name, e in evaluated.items():
        rec = recovery_ci(e.samples, evaluated[base].samples, above, run["bootstrap"])
        kl = kl_ci(e.fidelity, run["bootstrap"]) if name != base else None
        rows.append({"model": name, "recovery": rec, "kl": kl})
    figures = {
        "recovery": interval_chart(
            [ci_row(x["model"], "recovery", x["recovery"], 100) for x in rows],
            "recovery",
            f"recovery over {', '.join(above)}, % of {base}",
            100.0,
        ),
        "kl": interval_chart(
            [ci_row(x["model"], "kl", x["kl"]) for x in rows if x["kl"]], "kl", f"KL({base} ‖ model) per token"
        ),
    }
    lines = [f"# {run['title']}", "", run["summary"], ""]
    lines += results(summary, rows, folder.name)
    lines += md.measures_table(summary)
    lines += md.comparison_table(summary["comparisons"])
    lines += budgets(run)
    lines += provenance(run)
    return "\n".join(lines) + "\n", figures


def ci_row(model: str, name: str, estimate: tuple[float, float, float], scale: float = 1.0) -> dict:
    value, low, high = estimate
    return {"model": model, name: scale * value, "low": scale * low, "high": scale * high}


def results(summary: dict, rows: list[dict], figures: str) -> list[str]:
    above = summary["above_chance_tasks"]
    head = ["model", *(md.TITLES.get(t, t) for t in summary["tasks"]), "average", "above-chance average"]
    head += ["recovery above chance (95% CI)", "margin", "KL to base (95% CI)"]
    table = []
    for row in rows:
        m = summary["models"][row["model"]]
        cells = [f"`{row['model']}`", *(md.score_cell(m["tasks"][t]) for t in summary["tasks"])]
        cells += [pct(m["average"], sign=""), pct(m.get("average_above_chance"), sign="")]
        cells += [
            value_ci(row["recovery"][0], row["recovery"][1], row["recovery"][2], scale=100),
            num(m.get("margin")),
            value_ci(row["kl"][0], row["kl"][1], row["kl"][2], digits=4) if row["kl"] else "—",
        ]
        table.append(cells)
    return [
        "## Results",
        "",
        f"Scores in % (± stderr). Above-chance tasks: {', '.join(above) or 'none'}.",
        "",
        *md.table(head, table),
        f"![recovery]({figures}/recovery.svg)",
        "",
        f"![KL]({figures}/kl.svg)",
        "",
    ]  # fmt: skip


def budgets(run: dict) -> list[str]:
    share = run["distilled"]
    rows = [
        [ds, str(d["rows"]), str(d["kept_distilled"]), pct(d["kept_distilled_fraction"]), str(d["fallbacks"])]
        for ds, d in share["datasets"].items()
    ]
    arms = [
        [f"`{a}`", str(v["train_rows"]), str(v["distilled_rows"]), pct(v["share"])] for a, v in share["arms"].items()
    ]
    train = [
        [f"`{a}`", *(f"{v:,}" if isinstance(v, int) else str(v) for v in (f.get(k) for k in TRAINING))]
        for a, f in run["training"].items()  # in TRAINING's order: run.json stores its keys sorted
    ]
    head = [
        "arm",
        "seed",
        "steps",
        "epochs",
        "rows",
        "tokens seen",
        "val loss (own data)",
        "val loss (original)",
        "wall s",
    ]
    return [
        "## Distilled share",
        "",
        *md.table(["dataset", "rows", "kept rewrites", "share", "fallbacks (reason: rows)"], rows),
        *md.table(["arm", "training rows", "distilled rows", "share"], arms),
        "## Training budgets",
        "",
        "`val loss (original)` is every arm's loss on the same held-out rows with the original responses: the one to "
        "compare across arms (`val loss` is on the arm's own, possibly distilled, responses).",
        "",
        *md.table(head, train),
    ]  # fmt: skip


def provenance(run: dict) -> list[str]:
    seconds = run["seconds"]
    m = run["machine"]
    lines = [f"## Wall time per stage ({sum(seconds.values()) / 3600:.2f} h in all)", ""]
    lines += md.table(["stage", "seconds"], [[s, f"{v:.0f}"] for s, v in seconds.items()])
    return lines + [
        "## How it was run",
        "",
        f"- machine: {m['cores']} cores, {m['device']} ({', '.join(m['flags'])}), {m['ram_gib']} GiB RAM",
        f"- commit: `{run['commit']}`",
        f"- command: `{run['command']}`",
        f"- bootstrap: {run['bootstrap']['iterations']} resamples, seed {run['bootstrap']['seed']}",
        "- params that differ from `params.yaml` (the preset):",
        "",
        "```yaml",
        run["preset"].strip(),
        "```",
    ]


def write_report(folder: Path, out: Path) -> None:
    text, figures = render(folder)
    for name, spec in figures.items():
        (folder / f"{name}.svg").write_text(to_svg(spec), encoding="utf-8")
    out.write_text(text, encoding="utf-8")


def check_rendered(report: Path, text: str, source: str) -> int:
    """0 when the committed `report` equals `text` (rendered again from `source`), else 1 with the diff."""
    committed = report.read_text(encoding="utf-8")
    if text == committed:
        print(f"{report}: every figure recomputed from {source} matches")
        return 0
    diff = difflib.unified_diff(committed.splitlines(), text.splitlines(), "committed", "recomputed", lineterm="")
    print("\n".join(diff))
    print(f"{report} differs from what its data gives", file=sys.stderr)
    return 1


def verify(folder: Path) -> int:
    """0 when the committed report equals the one rendered again from the folder's data, else 1."""
    if (folder / "search.json").is_file():
        print(f"{folder} is a recipe search: python -m sdd.search verify {folder}", file=sys.stderr)
        return 1
    return check_rendered(folder.with_suffix(".md"), render(folder)[0], f"{folder}/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdd.study", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command_name", required=True)
    w = sub.add_parser("write", help="collect the run's data beside the report and write the report")
    w.add_argument("--preset", required=True)
    w.add_argument("--log", action="append", default=[])
    w.add_argument("--out", required=True, type=Path)
    w.add_argument("--command", required=True)
    w.add_argument("--title", default="Study")
    w.add_argument("--summary", default="")
    w.add_argument("--bootstrap", type=int, default=2000)
    v = sub.add_parser("verify", help="recompute the report from its committed data; fail on any difference")
    v.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command_name == "verify":
        return verify(args.folder)
    folder = args.out.parent / args.out.stem
    collect(load_params(), args, folder)
    write_report(folder, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
