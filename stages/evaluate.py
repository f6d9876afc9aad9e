"""Evaluate one model on the OpenLLM Leaderboard v1 tasks (lm-eval) and its fidelity to the base.

    python -m stages.evaluate pruned        (dvc.yaml: evaluate@pruned; names from evaluate.models)

Writes `<paths.metrics>/evaluate/<name>.json` (score and stderr per task, the average, fidelity,
and every setting behind the numbers: lm-eval version, backend, shots, limits, splits, few-shot
source) and `<paths.eval>/<name>.parquet` (one row per evaluated item, EVAL_SAMPLES). Each
finished task is checkpointed under `<paths.scratch>/evaluate/<name>/`, keyed by the model's bytes,
the settings and the task's documents: a killed run resumes with the tasks it had finished, and
the outputs are written (atomically) only once every task and the fidelity measurement are done.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sdd import evaluation, recovery, sources
from sdd.adapters import adapt_rows
from sdd.fidelity_measure import compare, reference_sequences, render_prompts
from sdd.io import to_frame, tree_digest, write_json, write_parquet
from sdd.modelio import load_model
from sdd.params import load_params
from sdd.runtime import device, log_params, run_stage, timed
from sdd.schemas import EVAL_SAMPLES
from stages.prepare import sample

log = logging.getLogger(__name__)


def fidelity_rows(params) -> list[dict]:
    """The held-out prompts (canonical rows), the same for every model."""
    rows = []
    for name, ds in params.evaluate.fidelity.prompts.items():
        adapted = adapt_rows(sources.read_rows(ds, params.mirror()), name, ds.format, params.prepare.max_chars)
        if not adapted.accepted:
            raise ValueError(f"evaluate.fidelity.prompts.{name}: no usable rows in {ds.source}")
        rows += sample(adapted.accepted, ds.limit, ds.seed)
    return rows


def measure_fidelity(params, name: str, model, tokenizer, dev: str) -> dict:
    cfg = params.evaluate.fidelity
    reference_dir = params.paths.model_dir(cfg.reference)
    same = params.paths.model_dir(params.evaluate.model(name)).resolve() == reference_dir.resolve()
    reference = model if same else load_model(reference_dir, params.evaluate.dtype, dev)[0]
    prompts = render_prompts(tokenizer, fidelity_rows(params))
    batches = reference_sequences(reference, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)
    out = compare(reference, model, batches)
    return {**out, "reference": str(reference_dir), "max_new_tokens": cfg.max_new_tokens,
            "prompt_sets": {k: v.model_dump() for k, v in cfg.prompts.items()}}


def main(argv: list[str]) -> None:
    (name,) = argv
    params = load_params()
    cfg, paths = params.evaluate, params.paths
    model_dir = paths.model_dir(cfg.model(name))
    log_params(f"evaluate@{name}", {"model_dir": str(model_dir), **cfg.model_dump(exclude={"models"})})
    dev = device()
    with timed(f"evaluate@{name}") as summary:
        mirror = params.mirror()
        tasks = evaluation.build_tasks(cfg.tasks, mirror)
        # hf: lm-eval wraps the model loaded here (safetensors checks), fidelity reuses it;
        # vllm: lm-eval starts one engine, the HF model is loaded for fidelity afterwards.
        model, tokenizer = load_model(model_dir, cfg.dtype, dev) if cfg.backend == "hf" else (None, None)
        settings = {"lm_eval_version": evaluation.lm_eval_version(), "backend": cfg.backend, "dtype": cfg.dtype,
                    "batch_size": cfg.batch_size, "chat_template": cfg.chat_template, "seed": cfg.seed,
                    "device": dev, "mirror": str(mirror) if mirror else None,
                    "vllm": cfg.vllm.model_dump() if cfg.backend == "vllm" else None}
        done = evaluation.run_tasks(lambda: evaluation.lm_eval_model(model_dir, cfg, dev, model, tokenizer), tasks,
                                    cfg, name, Path(paths.scratch) / "evaluate" / name,
                                    {**settings, "model": tree_digest(model_dir)})
        if model is None:
            model, tokenizer = load_model(model_dir, cfg.dtype, dev)
        samples = write_parquet(to_frame(done["rows"], EVAL_SAMPLES), paths.eval_samples_file(name), EVAL_SAMPLES)
        scores = recovery.task_scores(samples)
        fidelity = measure_fidelity(params, name, model, tokenizer, dev)
        metrics = {
            "model": name, "model_dir": str(model_dir),
            "average": recovery.average(scores),
            "tasks": {t.name: {**vars(scores[t.name]), **evaluation.task_settings(t),
                               "lm_eval": done["lm_eval"][t.name]} for t in tasks},
            "fidelity": fidelity,
            "settings": settings,
            "tasks_reused": done["reused"],
        }
        write_json(paths.metrics_file("evaluate", name), metrics)
        summary.update(average=round(metrics["average"], 4), kl=round(fidelity["kl"], 4), items=len(samples),
                       tasks_reused=len(done["reused"]))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_stage(main)
