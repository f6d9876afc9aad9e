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

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdd.artifacts import read_json
from sdd.cache import tree_digest
from sdd.config.evaluate import EvaluateParams
from sdd.eval import fidelity, harness, measures, stats


@dataclass
class Evaluation:
    samples: list[dict]  # EVAL_SAMPLES rows: one per evaluated item
    per_prompt: list[dict]  # FIDELITY_PER_PROMPT rows: one per fidelity prompt
    measures: list[dict]  # MEASURE_ROWS: per held-out row and measure
    metrics: dict  # scores per task, fidelity, measures, settings


@dataclass
class Inputs:
    """What every evaluation is measured against (stage fidelity_reference)."""

    reference_dir: Path  # the reference (base) model
    table: list[dict]  # its stored continuations (FIDELITY_REFERENCE rows)
    heldout: list[dict]  # the held-out rows (measures.HELDOUT)


def evaluate(
    name: str,
    model_dir: Path,
    cfg: EvaluateParams,
    dtype: str,
    dev: str,
    mirror: Path | None,
    inputs: Inputs,
    scratch: Path,
) -> Evaluation:
    """Evaluate the model in `model_dir` on `cfg.tasks`, against the reference model (its stored
    continuations) and on the held-out rows, computing in the resolved `dtype` on `dev`."""
    from sdd.model.checkpoint import load_model
    from sdd.model.memory import check_engine, check_evaluation

    clock = Clock()
    if cfg.backend == "hf":
        check_evaluation(model_dir, dtype, cfg.batch_size, max(t.shots for t in cfg.tasks.values()), dev)
    else:
        check_engine(model_dir, dtype, cfg.vllm.max_model_len, cfg.vllm.gpu_memory_utilization, dev, "evaluate.vllm")
    tasks = harness.build_tasks(cfg.tasks, mirror)
    model, tokenizer = load_model(model_dir, dtype, dev) if cfg.backend == "hf" else (None, None)
    settings = harness.run_settings(cfg, dtype, dev, mirror)
    make_lm = lambda: harness.lm_eval_model(model_dir, cfg, dtype, dev, model, tokenizer)  # noqa: E731
    clock.lap("load")
    digest = tree_digest(model_dir, scratch.parent.parent)  # stat-cached under paths.scratch
    done = harness.run_tasks(make_lm, tasks, cfg, name, scratch, {**settings, "model": digest})
    clock.lap("tasks")
    if model is None:
        model, tokenizer = load_model(model_dir, dtype, dev)
    scores = stats.task_scores(_frame(done.rows))
    same = Path(model_dir).resolve() == inputs.reference_dir.resolve()
    reference = model if same else load_model(inputs.reference_dir, dtype, dev)[0]
    measured = fidelity.against_reference(reference, model, tokenizer, cfg.fidelity, inputs.reference_dir, inputs.table)
    per_prompt = measured.pop("per_prompt")
    clock.lap("fidelity")
    held = measures.measure(model, reference, inputs.heldout, cfg.measures.batch_size, fidelity.pad_id(tokenizer))
    clock.lap("measures")
    metrics = {
        "model": name,
        "model_dir": str(model_dir),
        "config": read_json(model_dir / "config.json"),  # the report sizes each model from its own config
        "average": stats.average(scores),
        "tasks": {
            t.name: {**vars(scores[t.name]), **harness.task_settings(t), "lm_eval": done.lm_eval[t.name]} for t in tasks
        },
        "fidelity": measured,
        "measures": measures.summary(held),
        "settings": settings,
        "tasks_reused": done.reused,
        "seconds": clock.laps,
    }
    return Evaluation(done.rows, per_prompt, held, metrics)


class Clock:
    """Seconds per named step of an evaluation (recorded in its metrics)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.start, 2)
        self.start = now


def headline(metrics: dict, items: int) -> dict:
    """evaluate@<model>'s headline numbers: average, chat-format KL, gold NLL, plain-text KL."""
    fid, held = metrics["fidelity"], metrics["measures"]
    head = {"average": metrics["average"], "kl": fid["kl"], "top1_agreement": fid["top1_agreement"]}
    head |= {m: held[m]["value"] for m in ("gold_nll", "plain_kl") if m in held}
    return {k: round(v, 4) for k, v in head.items()} | {"items": items}


def _frame(rows: list[dict]) -> Any:
    from sdd.artifacts import to_frame
    from sdd.data.schemas import EVAL_SAMPLES

    return to_frame(rows, EVAL_SAMPLES)
