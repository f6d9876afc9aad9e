"""Evaluate one model on the OpenLLM Leaderboard v1 tasks (lm-eval) and its fidelity to the base.

    python -m stages.evaluate pruned        (dvc.yaml: evaluate@pruned; names from evaluate.models)

Writes `<paths.metrics>/evaluate/<name>.headline.json` (average, KL, top-1 agreement),
`<paths.metrics>/evaluate/<name>.json` (score and stderr per task, fidelity, and every setting
behind the numbers: lm-eval version, backend, shots, limits, splits, few-shot source) and
`<paths.eval>/<name>.parquet` (one row per evaluated item, EVAL_SAMPLES), `<paths.eval>/<name>.fidelity.parquet`
(one row per fidelity prompt: tokens and sums, for paired comparisons). Fidelity is measured on
the reference's continuations from `<paths.eval>/fidelity.reference.parquet` (stage
fidelity_reference). Each finished task is
checkpointed under `<paths.scratch>/evaluate/<name>/`, keyed by the model's bytes, the settings and
the task's documents: a killed run resumes with the tasks it had finished, and the outputs are
written (atomically) only once every task and the fidelity measurement are done.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdd.artifacts import read_json, read_parquet, to_frame, write_json, write_parquet
from sdd.cache import tree_digest
from sdd.config import load_params
from sdd.data.schemas import EVAL_SAMPLES
from sdd.eval import fidelity, harness, stats
from sdd.model.checkpoint import load_model
from sdd.runtime import device, log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    name = stage_args(argv, __doc__, "model", "a key of evaluate.models in params.yaml").model
    params = load_params()
    cfg, paths = params.evaluate, params.paths
    model_dir = paths.model_dir(cfg.model(name))
    log_params(f"evaluate@{name}", {"model_dir": str(model_dir), **cfg.model_dump(exclude={"models"})})
    dev = device()
    with timed(f"evaluate@{name}") as summary:
        reference = read_parquet(fidelity.reference_file(paths.eval), fidelity.FIDELITY_REFERENCE, "fidelity_reference")
        mirror = params.mirror()
        tasks = harness.build_tasks(cfg.tasks, mirror)
        # hf: lm-eval wraps the model loaded here (safetensors checks), fidelity reuses it;
        # vllm: lm-eval starts one engine, the HF model is loaded for fidelity afterwards.
        model, tokenizer = load_model(model_dir, cfg.dtype, dev) if cfg.backend == "hf" else (None, None)
        settings = harness.run_settings(cfg, dev, mirror)
        scratch = Path(paths.scratch) / "evaluate" / name
        make_lm = lambda: harness.lm_eval_model(model_dir, cfg, dev, model, tokenizer)  # noqa: E731
        done = harness.run_tasks(make_lm, tasks, cfg, name, scratch, {**settings, "model": tree_digest(model_dir)})
        if model is None:
            model, tokenizer = load_model(model_dir, cfg.dtype, dev)
        samples = write_parquet(to_frame(done.rows, EVAL_SAMPLES), paths.eval_samples_file(name), EVAL_SAMPLES)
        scores = stats.task_scores(samples)
        fid, root = cfg.fidelity, Path(paths.models)
        table = reference.to_dict("records")
        measured = fidelity.against_reference(model_dir, model, tokenizer, fid, root, cfg.dtype, dev, table)
        per_prompt = to_frame(measured.pop("per_prompt"), fidelity.FIDELITY_PER_PROMPT)
        write_parquet(per_prompt, fidelity.per_prompt_file(paths.eval, name), fidelity.FIDELITY_PER_PROMPT)
        metrics = {
            "model": name,
            "model_dir": str(model_dir),
            "config": read_json(model_dir / "config.json"),  # the report sizes each model from its own config
            "average": stats.average(scores),
            "tasks": {
                t.name: {**vars(scores[t.name]), **harness.task_settings(t), "lm_eval": done.lm_eval[t.name]}
                for t in tasks
            },
            "fidelity": measured,
            "settings": settings,
            "tasks_reused": done.reused,
        }
        write_json(paths.metrics_file("evaluate", name), metrics)
        head = {"average": metrics["average"], "kl": measured["kl"], "top1_agreement": measured["top1_agreement"]}
        write_json(
            paths.headline_file("evaluate", name), {k: round(v, 4) for k, v in head.items()} | {"items": len(samples)}
        )
        summary.update(average=round(metrics["average"], 4), items=len(samples), tasks_reused=len(done.reused))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_stage(main)
