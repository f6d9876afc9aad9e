"""Evaluate one model on the OpenLLM Leaderboard v1 tasks (lm-eval) and its fidelity to the base.

    python -m stages.evaluate pruned            (dvc.yaml: evaluate@pruned, a key of evaluate.models)
    python -m stages.evaluate sdd --arm         (evaluate_arm@sdd: every key of finetune.arms)
    python -m stages.evaluate sdd_wise --merged (evaluate_merged@sdd_wise: every key of merge.recipes)

Writes `<paths.metrics>/evaluate/<name>.headline.json` (average, KL, top-1 agreement),
`<paths.metrics>/evaluate/<name>.json` (score and stderr per task, fidelity, and every setting
behind the numbers: lm-eval version, backend, shots, limits, splits, few-shot source) and
`<paths.eval>/<name>.parquet` (one row per evaluated item, EVAL_SAMPLES: score and choice margin),
`<paths.eval>/<name>.fidelity.parquet` (one row per fidelity prompt: tokens and sums, for paired
comparisons) and `<paths.eval>/<name>.measures.parquet` (one row per held-out row and measure: gold
NLL, plain-text KL and NLL; sdd/eval/measures.py). Fidelity is measured on
the reference's continuations from `<paths.eval>/fidelity.reference.parquet` (stage
fidelity_reference). Each finished task is
checkpointed under `<paths.scratch>/evaluate/<name>/`, keyed by the model's bytes, the settings and
the task's documents: a killed run resumes with the tasks it had finished, and the outputs are
written (atomically) only once every task and the fidelity measurement are done.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdd.artifacts import read_parquet, to_frame, write_json, write_parquet
from sdd.config import load_params, models
from sdd.data.schemas import EVAL_SAMPLES
from sdd.eval import evaluation
from sdd.eval.fidelity import FIDELITY_PER_PROMPT, FIDELITY_REFERENCE, per_prompt_file, reference_file
from sdd.eval.measures import HELDOUT, MEASURE_ROWS, heldout_file, measures_file
from sdd.hardware import precision_record, resolve_dtype
from sdd.runtime import device, log_params, run_stage, stage_args, timed

KINDS = {"arm": "the model is finetune.arms.<model>", "merged": "the model is merge.recipes.<model>"}


def main(argv: list[str]) -> None:
    args = stage_args(argv, __doc__, "model", "a model name (evaluate.models; finetune.arms; merge.recipes)", KINDS)
    name = args.model
    kind: models.Kind = "arm" if args.arm else "merged" if args.merged else "model"
    params = load_params()
    cfg, paths = params.evaluate, params.paths
    model_dir = paths.model_dir(models.model_dir(params, name, kind))
    stage = models.stage_name("evaluate", name, kind)
    log_params(stage, {"model_dir": str(model_dir), **cfg.model_dump(exclude={"models"})})
    outputs = {  # file -> (rows, schema); a skipped model gets them empty (DVC needs its outputs)
        paths.eval_samples_file(name): EVAL_SAMPLES,
        per_prompt_file(paths.eval, name): FIDELITY_PER_PROMPT,
        measures_file(paths.eval, name): MEASURE_ROWS,
    }
    if name in cfg.skip:
        for file, schema in outputs.items():
            write_parquet(to_frame([], schema), file, schema)
        write_json(paths.metrics_file("evaluate", name), {"model": name, "skipped": True})
        return write_json(paths.headline_file("evaluate", name), {"skipped": 1})
    dtype = resolve_dtype(cfg.dtype, "vllm" if cfg.backend == "vllm" else "inference")
    with timed(stage) as summary:
        inputs = evaluation.Inputs(
            paths.model_dir(cfg.fidelity.reference),
            read_parquet(reference_file(paths.eval), FIDELITY_REFERENCE, "fidelity_reference").to_dict("records"),
            read_parquet(heldout_file(paths.eval), HELDOUT, "fidelity_reference").to_dict("records"),
        )
        scratch = Path(paths.scratch) / "evaluate" / name
        result = evaluation.evaluate(name, model_dir, cfg, dtype, device(), params.mirror(), inputs, scratch)
        for (file, schema), rows in zip(outputs.items(), (result.samples, result.per_prompt, result.measures)):
            write_parquet(to_frame(rows, schema), file, schema)
        metrics = {**result.metrics, "precision": precision_record(cfg.dtype, dtype)}
        write_json(paths.metrics_file("evaluate", name), metrics)
        write_json(paths.headline_file("evaluate", name), evaluation.headline(metrics, len(result.samples)))
        summary.update(average=round(metrics["average"], 4), items=len(result.samples))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_stage(main)
