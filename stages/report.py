"""Write the recovery table from every evaluated model's metrics and per-sample records.

    python -m stages.report        (dvc.yaml: report)

Reads, for every evaluated model (evaluate.models, every arm and merge recipe; sdd/config/models.py),
`<paths.metrics>/evaluate/<model>.json` (scores, and the model's config), `<paths.eval>/<model>.parquet`
and `<model>.fidelity.parquet` (paired CIs, seed-averaged over replicate arms); then
`<paths.metrics>/prune/prune.json` (reductions, flops_context) and, where they exist,
`<paths.metrics>/speculate/<draft>.json` and `<paths.metrics>/layer_scores/scores.json` (which
block each metric picks). Writes `<paths.reports>/recovery.md`, `<paths.metrics>/report/report.json`
(details), `report.headline.json` (`dvc metrics show`) and the `dvc plots` data
`<paths.reports>/plots/{recovery,tasks,sweep}.csv` (sweep: one row per model at this run's cut
depth, drawn across experiments by dvc.yaml's top-level `plots`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from sdd.artifacts import atomic_path, read_json, read_parquet, write_json
from sdd.config import load_params, models
from sdd.data.schemas import EVAL_SAMPLES
from sdd.eval.per_prompt import FIDELITY_PER_PROMPT, per_prompt_file
from sdd.eval.report import headline, markdown, plot_rows, summarise, sweep_rows
from sdd.runtime import log_params, run_stage, stage_args, timed

log = logging.getLogger(__name__)


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    cfg, paths = params.report, params.paths
    names, pairs, groups = models.evaluated(params), models.comparisons(params), models.replicate_groups(params)
    log_params("report", {**cfg.model_dump(), "models": names, "comparisons": pairs, "replicates": groups})
    with timed("report") as summary:
        evals = {name: read_json(paths.metrics_file("evaluate", name)) for name in names}
        samples = {
            name: read_parquet(paths.eval_samples_file(name), EVAL_SAMPLES, f"evaluate@{name}") for name in names
        }
        fid = {n: read_parquet(per_prompt_file(paths.eval, n), FIDELITY_PER_PROMPT, f"evaluate@{n}") for n in names}
        configs = {name: ev["config"] for name, ev in evals.items() if "config" in ev}  # evaluate@ records them
        prune_file = paths.metrics_file("prune")
        prune = read_json(prune_file) if prune_file.is_file() else None
        if prune is None:
            log.warning("%s not found: no pruning line, FLOPs with n_ctx = 0", prune_file)
        drafts = sorted((Path(paths.metrics) / "speculate").glob("*.json"))
        speculate = {f.stem: read_json(f) for f in drafts if not f.name.endswith(".headline.json")}
        speculate = {name: s for name, s in speculate.items() if not s.get("skipped")}
        scores = paths.metrics_file("layer_scores", "scores")
        layer_scores = read_json(scores) if scores.is_file() else None
        result = summarise(
            evals,
            samples,
            cfg.baseline,
            pairs,
            cfg.bootstrap,
            cfg.confidence,
            cfg.seed,
            prune=prune,
            speculate=speculate,
            layer_scores=layer_scores,
            configs=configs,
            fidelity=fid,
            replicates=groups,
        )
        text = markdown(result)
        with atomic_path(paths.report_file("recovery.md")) as tmp:
            tmp.write_text(text, encoding="utf-8")
        for plot, rows in zip(("recovery", "tasks", "sweep"), (*plot_rows(result), sweep_rows(result)), strict=True):
            write_csv(rows, paths.report_file(f"plots/{plot}.csv"))
        details = ("models", "comparisons", "above_chance_tasks")
        write_json(paths.metrics_file("report"), {k: result[k] for k in details})
        write_json(paths.headline_file("report"), headline(result))
        summary.update(models=len(evals), comparisons=len(result["comparisons"]))


if __name__ == "__main__":
    run_stage(main)
