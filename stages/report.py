"""Write the recovery table from every evaluated model's metrics and per-sample records.

    python -m stages.report        (dvc.yaml: report)

Reads, for every evaluated model (evaluate.models, every arm and merge recipe; sdd/config/models.py),
`<paths.metrics>/evaluate/<model>.json` (scores, and the model's config), `<paths.eval>/<model>.parquet`,
`<model>.fidelity.parquet` and `<model>.measures.parquet` (CIs over seeds and items); then
`<paths.metrics>/prune/prune.json` (reductions, flops_context) and, where they exist,
`<paths.metrics>/speculate/<draft>.json` and `<paths.metrics>/layer_scores/scores.json` (which
block each metric picks). Writes `<paths.reports>/recovery.md`, `<paths.metrics>/report/report.json`
(details), `report.headline.json` (`dvc metrics show`) and the `dvc plots` data
`<paths.reports>/plots/{recovery,tasks,sweep}.csv` (sweep: one row per model at this run's cut
depth, drawn across experiments by dvc.yaml's top-level `plots`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdd.artifacts import atomic_path, read_json, read_parquet, write_json
from sdd.config import load_params, models
from sdd.data.schemas import EVAL_SAMPLES
from sdd.eval.compare import Evaluated
from sdd.eval.markdown import markdown
from sdd.eval.measures import MEASURE_ROWS, measures_file
from sdd.eval.per_prompt import FIDELITY_PER_PROMPT, per_prompt_file
from sdd.eval.report import ReportInputs, headline, plot_rows, summarise, sweep_rows
from sdd.runtime import log_params, run_stage, stage_args, timed


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def optional(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    cfg, paths = params.report, params.paths
    names, pairs, groups = models.evaluated(params), models.comparisons(params), models.replicate_groups(params)
    log_params("report", {**cfg.model_dump(), "models": names, "comparisons": pairs, "replicates": groups})
    with timed("report") as summary:
        evals = {name: read_json(paths.metrics_file("evaluate", name)) for name in names}
        evaluated = {
            n: Evaluated(
                read_parquet(paths.eval_samples_file(n), EVAL_SAMPLES, f"evaluate@{n}"),
                read_parquet(per_prompt_file(paths.eval, n), FIDELITY_PER_PROMPT, f"evaluate@{n}"),
                read_parquet(measures_file(paths.eval, n), MEASURE_ROWS, f"evaluate@{n}"),
            )
            for n in names
        }
        drafts = sorted((Path(paths.metrics) / "speculate").glob("*.json"))
        speculate = {f.stem: read_json(f) for f in drafts if not f.name.endswith(".headline.json")}
        inputs = ReportInputs(
            prune=optional(paths.metrics_file("prune")),
            speculate={name: s for name, s in speculate.items() if not s.get("skipped")},
            layer_scores=optional(paths.metrics_file("layer_scores", "scores")),
        )
        boot = {"iterations": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed}
        result = summarise(evaluated, evals, cfg.baseline, cfg.start, pairs, groups, boot, inputs)
        with atomic_path(paths.report_file("recovery.md")) as tmp:
            tmp.write_text(markdown(result), encoding="utf-8")
        for plot, rows in zip(("recovery", "tasks", "sweep"), (*plot_rows(result), sweep_rows(result)), strict=True):
            write_csv(rows, paths.report_file(f"plots/{plot}.csv"))
        details = {k: result[k] for k in ("models", "comparisons", "above_chance_tasks", "replicates")}
        write_json(paths.metrics_file("report"), details)
        write_json(paths.headline_file("report"), headline(result))
        summary.update(models=len(evals), comparisons=len(result["comparisons"]))


if __name__ == "__main__":
    run_stage(main)
