"""One model's evaluation, as named steps: the leaderboard tasks (lm-eval), then its fidelity to the
reference model, then the metrics that record every setting behind the numbers.

    result = evaluate("sft", Path("data/models/finetuned/sft"), params.evaluate, "float32", "cpu",
                      mirror, reference_rows, scratch=Path(".sdd-scratch/evaluate/sft"), models_root)
    result.samples, result.per_prompt, result.metrics     # what evaluate@<model> writes

Loads the model once (hf backend: lm-eval wraps it, fidelity reuses it; vllm backend: lm-eval
starts one engine, the HF model is loaded for fidelity afterwards). Tasks are checkpointed under
`scratch` (sdd/eval/harness.py), so a killed evaluation resumes with the tasks it had finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdd.artifacts import read_json
from sdd.cache import tree_digest
from sdd.config.evaluate import EvaluateParams
from sdd.eval import fidelity, harness, stats


@dataclass
class Evaluation:
    samples: list[dict]  # EVAL_SAMPLES rows: one per evaluated item
    per_prompt: list[dict]  # FIDELITY_PER_PROMPT rows: one per fidelity prompt
    metrics: dict  # scores per task, fidelity, settings


def evaluate(
    name: str,
    model_dir: Path,
    cfg: EvaluateParams,
    dtype: str,
    dev: str,
    mirror: Path | None,
    reference: list[dict],
    scratch: Path,
    models_root: Path,
) -> Evaluation:
    """Evaluate the model in `model_dir` on `cfg.tasks` and against `reference` (the stored
    continuations of fidelity_reference), computing in the resolved `dtype` on `dev`."""
    from sdd.model.checkpoint import load_model

    tasks = harness.build_tasks(cfg.tasks, mirror)
    model, tokenizer = load_model(model_dir, dtype, dev) if cfg.backend == "hf" else (None, None)
    settings = harness.run_settings(cfg, dtype, dev, mirror)
    make_lm = lambda: harness.lm_eval_model(model_dir, cfg, dtype, dev, model, tokenizer)  # noqa: E731
    done = harness.run_tasks(make_lm, tasks, cfg, name, scratch, {**settings, "model": tree_digest(model_dir)})
    if model is None:
        model, tokenizer = load_model(model_dir, dtype, dev)
    scores = stats.task_scores(_frame(done.rows))
    measured = fidelity.against_reference(model_dir, model, tokenizer, cfg.fidelity, models_root, dtype, dev, reference)
    per_prompt = measured.pop("per_prompt")
    metrics = {
        "model": name,
        "model_dir": str(model_dir),
        "config": read_json(model_dir / "config.json"),  # the report sizes each model from its own config
        "average": stats.average(scores),
        "tasks": {
            t.name: {**vars(scores[t.name]), **harness.task_settings(t), "lm_eval": done.lm_eval[t.name]} for t in tasks
        },
        "fidelity": measured,
        "settings": settings,
        "tasks_reused": done.reused,
    }
    return Evaluation(done.rows, per_prompt, metrics)


def headline(metrics: dict, items: int) -> dict:
    """The few numbers dvc.yaml declares as evaluate@<model>'s metrics."""
    fid = metrics["fidelity"]
    head = {"average": metrics["average"], "kl": fid["kl"], "top1_agreement": fid["top1_agreement"]}
    return {k: round(v, 4) for k, v in head.items()} | {"items": items}


def _frame(rows: list[dict]) -> Any:
    from sdd.artifacts import to_frame
    from sdd.data.schemas import EVAL_SAMPLES

    return to_frame(rows, EVAL_SAMPLES)
