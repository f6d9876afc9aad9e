"""Publishable model cards: each evaluated model's lineage with its evaluation results.

    python -m stages.publish        (dvc.yaml: publish)

Reads, for every evaluated model (sdd/config/models.py), the card its own stage wrote (`<model dir>/README.md`:
how it was made) and `<paths.metrics>/evaluate/<model>.json`, and the report's recovery
(`<paths.metrics>/report/report.json`). Writes `<paths.reports>/cards/<model>.md`: the same YAML
metadata plus Hugging Face `model-index` results and a results table, ready to be the README of an
upload. The model folders themselves are never rewritten (each belongs to the stage that made it).
"""

from __future__ import annotations

from sdd.artifacts import atomic_path, read_json
from sdd.config import load_params, models
from sdd.model.card import Card, how_of, lineage, model_index
from sdd.runtime import log_params, run_stage, stage_args, timed


def results_table(name: str, evaluation: dict, summary: dict) -> str:
    rows = [
        f"| {t} | {v['shots']} | {v['n']} | {100 * v['score']:.1f} ± {100 * v['stderr']:.1f} |"
        for t, v in sorted(evaluation["tasks"].items())
    ]
    model = summary["models"].get(name, {})
    recovery = model.get("recovery")
    lines = [
        "",
        "## Evaluation (this pipeline, lm-evaluation-harness)",
        "",
        "Scores in %, ± stderr. Item counts are what ran (`evaluate.tasks` limits): a partial suite is not",
        "comparable with the full leaderboard.",
        "",
        "| task | shots | items | score |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Average {100 * model.get('average', float('nan')):.1f}"
        + (f"; recovery vs the base model {100 * recovery:.1f}%" if recovery is not None else "")
        + f"; fidelity KL(base ‖ model) {evaluation['fidelity']['kl']:.4f}, top-1 agreement "
        f"{100 * evaluation['fidelity']['top1_agreement']:.1f}%.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    paths = params.paths
    dirs = models.model_dirs(params)
    names = models.evaluated(params)
    log_params("publish", {"models": {n: dirs[n] for n in names}})
    with timed("publish") as summary:
        report = read_json(paths.metrics_file("report"))
        base_ids, licence = lineage(params)
        with atomic_path(paths.report_file("cards")) as out:
            out.mkdir()
            for name in names:
                folder = dirs[name]
                evaluation = read_json(paths.metrics_file("evaluate", name))
                how = how_of(paths.model_dir(folder)) or [
                    f"`{params.base_model.source}`, unmodified"
                    if folder == "base"
                    else f"no card in {paths.model_dir(folder)} (written before model cards existed)"
                ]
                card = Card(name, base_ids, [], how, licence, ["evaluated"])
                text = card.render(model_index(evaluation), results_table(name, evaluation, report))
                (out / f"{name}.md").write_text(text, encoding="utf-8")
        summary.update(cards=len(names))


if __name__ == "__main__":
    run_stage(main)
