"""One arm's recovery fine-tuning, as named steps in the manner of torchtune's single-device recipes:
data -> model -> objective -> train -> results. The stage (`stages/finetune.py`) runs them and writes
every artifact (model folder, card, curves, metrics); nothing here writes an output.

    run = Run.of(params, "sdd", run_dir, "cpu", world_size=1)
    data = load_data(run, tokenizer)         # encoded train / validation examples (+ teacher rows for kd)
    model = load_model(run)                  # the pruned model with the method's trainable weights
    trained = train(run, model, data)        # transformers' Trainer, resumed from the last checkpoint
    metrics = results(run, trained, data)    # None on the non-main processes of a distributed run
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdd.artifacts import read_parquet
from sdd.config import Params
from sdd.config.finetune import ArmParams, FinetuneParams, sharded
from sdd.config.paths import Paths
from sdd.data.examples import encode_rows, split_by_id
from sdd.data.schemas import DISTILLED, PREPARED
from sdd.errors import InputError
from sdd.hardware import precision_record
from sdd.model import kd, progress
from sdd.model import training as ft
from sdd.model.card import Card, dataset_ids, how_of, lineage
from sdd.model.checkpoint import load_model as load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One arm's training: its settings, where it checkpoints, on which device, in how many processes."""

    name: str
    spec: ArmParams
    method: str  # the arm's own method, else finetune.method
    cfg: FinetuneParams
    params: Params
    run_dir: Path
    dev: str
    world_size: int = 1

    @classmethod
    def of(cls, params: Params, arm: str, run_dir: Path, dev: str, world_size: int = 1) -> Run:
        cfg = params.finetune
        spec = cfg.arms[arm]
        return cls(arm, spec, spec.method or cfg.method, cfg, params, run_dir, dev, world_size)


@dataclass
class Data:
    train: list[dict]  # encoded examples (input_ids, labels, + teacher tensors for kd)
    evals: dict[str, list[dict]]  # "val" (the arm's own responses), "val_original" (distilled arms)
    counts: dict  # what encoding did (kept, truncated, dropped)


@dataclass
class Trained:
    model: Any  # the trained model in one piece (main process), else None
    trainer: Any
    args: Any  # its TrainingArguments
    result: Any  # Trainer.train's TrainOutput
    final: dict  # the last validation
    resume: str | None  # the checkpoint it resumed from
    resumed_tokens: int  # tokens seen before that checkpoint
    timer: progress.StepTimer
    curves: progress.LossCurves | None
    seconds: float


def arm_inputs(paths: Paths, arm: ArmParams) -> list[Path]:
    """The files an arm trains on: its data, and for `kd` the teacher logits of that data (and of
    the original responses, on which it is validated too)."""
    files = [
        paths.prepared_file(ds) if kind == "original" else paths.distilled_file(ds) for ds, kind in arm.data.items()
    ]
    if arm.objective == "kd":  # validation on the original responses uses their teacher logits too
        for ds, kind in sorted({*arm.data.items(), *((ds, "original") for ds in arm.data)}):
            folder = paths.teacher_dir(ds, kind)
            files += [folder / "manifest.json", *sorted(folder.glob("*.safetensors"))]
    return files


def dataset_rows(paths: Paths, ds: str, kind: str) -> list[dict]:
    """A dataset's rows with `response` = the text an arm of this kind trains on (and `response_original`)."""
    if kind == "original":
        df = read_parquet(paths.prepared_file(ds), PREPARED, producer=f"prepare@{ds}")
        df = df.assign(response_original=df["response"])
    else:
        df = read_parquet(paths.distilled_file(ds), DISTILLED, producer=f"distill@{ds}")
    return df.to_dict("records")


def read_arm(
    paths: Paths, data: Mapping[str, str], val_fraction: float, seed: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train rows, validation rows, the same validation rows with the original response)."""
    train_rows: list[dict] = []
    val: list[dict] = []
    val_original: list[dict] = []
    for ds, kind in data.items():
        rows = dataset_rows(paths, ds, kind)
        held_out = split_by_id([r["id"] for r in rows], val_fraction, seed)
        train_rows += [r for r in rows if r["id"] not in held_out]
        val += [r for r in rows if r["id"] in held_out]
        val_original += [{**r, "response": r["response_original"]} for r in rows if r["id"] in held_out]
    return train_rows, val, val_original


def arm_seed(cfg: Any, arm: str) -> int:
    """The seed of an arm's data order and LoRA init: its own `seed`, else finetune.seed (read field by
    field: a section method would count as reading every key of the section)."""
    own = cfg.arms[arm].seed
    return cfg.seed if own is None else own


def resolved(
    params: Params, arm: str, run_dir: Path, dev: str, world_size: int = 1, train_examples: int = 0
) -> tuple[ArmParams, Any]:
    """(the arm, the TrainingArguments) exactly as training uses them."""
    cfg = params.finetune
    steps = ft.total_steps(cfg, train_examples, world_size)
    args = ft.training_arguments(cfg, str(run_dir / "checkpoints"), dev, world_size, steps, arm_seed(cfg, arm))
    return cfg.arms[arm], args


def card(params: Params, arm: str, method: str, metrics: dict, args: Any) -> Card:
    """The model card of a trained arm: its pruned parent's lineage, then how it was trained."""
    cfg, spec = params.finetune, params.finetune.arms[arm]
    base_ids, licence = lineage(params)
    data = ", ".join(f"{ds} ({kind} responses)" for ds, kind in spec.data.items())
    if method == "lora":
        how = f"LoRA rank {cfg.lora.rank}, alpha {cfg.lora.alpha} on {', '.join(cfg.lora.target_modules)}, merged"
    elif method == "last_layers":
        how = f"last {cfg.last_layers.n} decoder layers, final norm and LM head trained in full"
    else:
        how = "every weight trained"
    objective = (
        f"logit distillation from the base model's top-{params.teacher_logits.top_k} log-probs "
        f"(alpha {cfg.kd.alpha}, T {cfg.kd.temperature})"
        if spec.objective == "kd"
        else "cross-entropy on the response tokens"
    )
    batch = cfg.batch_size * cfg.grad_accum * metrics["num_processes"]
    return Card(
        f"{arm}: recovery fine-tuning of a pruned model",
        base_ids,
        dataset_ids(params, list(spec.data)),
        [
            *how_of(params.paths.model_dir("pruned")),
            f"Recovery arm `{arm}`: {data}; self-distilled responses are the base model's own rewrites, "
            "answer-checked for math",
            f"Objective: {objective}; method: {how}",
            f"{metrics['steps']} optimizer steps ({metrics['epochs']} epochs over {metrics['train_rows']} rows), "
            f"effective batch {batch}, {metrics['tokens_seen']:,} tokens, lr {cfg.learning_rate} {cfg.schedule}, "
            f"seed {metrics['seed']}, bf16 {args.bf16}",
            f"Validation loss {metrics['val_loss']} ({metrics['val_rows']} held-out rows)",
        ],
        licence,
        ["recovery", spec.objective, method],
    )


def whole(trainer: Any, pruned: Path, folder: Path, method: str) -> Any:
    """The trained model in one piece on the main process (None elsewhere). Under FSDP each process
    holds a shard of every weight: `save_model` gathers the full state dict (the configs' FULL_STATE_DICT)
    into `folder` on the main process, which reloads it: the adapter onto the pruned model, or the weights."""
    from transformers import AutoModelForCausalLM

    trainer.save_model(str(folder))  # collective: every process takes part
    if not trainer.is_world_process_zero():
        return None
    if method != "lora":
        return AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    from peft import PeftModel

    return PeftModel.from_pretrained(load_checkpoint(pruned, "float32")[0], folder)


def prepare(run: Run) -> Path:
    """Before any model loads (in the launching process of a distributed run): the arm's inputs exist
    and are valid, one training process fits in memory, and the checkpoint folder is keyed by
    everything the run depends on (a changed input never resumes a stale checkpoint). Returns the folder."""
    from sdd.artifacts import read_json
    from sdd.cache import file_digest, fingerprint, keyed_dir
    from sdd.config.finetune import world_size
    from sdd.model import memory, pruning
    from sdd.model.checkpoint import check_model_dir
    from sdd.model.launch import accelerate_config

    cfg, paths, spec = run.cfg, run.params.paths, run.spec
    model_dir = paths.model_dir("pruned")
    check_model_dir(model_dir)
    read_arm(paths, spec.data, cfg.val_fraction, cfg.seed)  # a missing or invalid input fails here
    config = pruning.config_from_dict(read_json(model_dir / "config.json"))
    memory.check_training(config, run.name, cfg, run.method, run.dev)
    if spec.objective == "kd":  # so do missing or invalid teacher logits (validated on original text too)
        for data in (spec.data, dict.fromkeys(spec.data, "original")):
            kd.teacher_lookup(paths, data)
    inputs = sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"] + arm_inputs(paths, spec)
    if world_size(cfg) > 1:
        inputs.append(accelerate_config(cfg, run.dev))
    key = {"settings": cfg.training_settings(), "arm": spec.model_dump(), "inputs": file_digest(inputs)}
    return keyed_dir(run.run_dir, fingerprint(key))


def load_data(run: Run, tokenizer: Any) -> Data:
    """Step 1, data: the arm's rows rendered (finetune.rendering) and encoded, the held-out rows every
    arm shares as validation (and, for distilled arms, the same rows with the original response);
    for `kd`, each example with its teacher's top-k."""
    cfg, paths = run.cfg, run.params.paths
    train_rows, val_rows, val_original_rows = read_arm(paths, run.spec.data, cfg.val_fraction, cfg.seed)
    train, counts = encode_rows(train_rows, tokenizer, cfg.max_seq_len, cfg.overlong, cfg.rendering)
    if not train:
        raise InputError(
            f"arm {run.name!r}: no training example left after finetune.overlong={cfg.overlong} at "
            f"max_seq_len={cfg.max_seq_len} ({counts}); raise finetune.max_seq_len"
        )
    evals = {"val": encode_rows(val_rows, tokenizer, cfg.max_seq_len, "truncate", cfg.rendering)[0]}
    if "distilled" in run.spec.data.values():
        evals["val_original"] = encode_rows(val_original_rows, tokenizer, cfg.max_seq_len, "truncate", cfg.rendering)[0]
    if run.spec.objective == "kd":
        lookup = kd.teacher_lookup(paths, run.spec.data)
        train, evals["val"] = kd.attach_teacher(train, lookup), kd.attach_teacher(evals["val"], lookup)
        if "val_original" in evals:  # the original responses' teacher logits
            original = kd.teacher_lookup(paths, dict.fromkeys(run.spec.data, "original"))
            evals["val_original"] = kd.attach_teacher(evals["val_original"], original)
    return Data(train, evals, counts)


def load_model(run: Run) -> tuple[Any, Any]:
    """Step 2, model: the pruned checkpoint in float32 with the method's trainable weights, initialised
    from the arm's seed (the LoRA init draws from torch's RNG before the Trainer seeds it)."""
    from transformers import set_seed

    model, tokenizer = load_checkpoint(run.params.paths.model_dir("pruned"), "float32")
    set_seed(arm_seed(run.cfg, run.name))
    return ft.apply_method(model, run.cfg, run.method), tokenizer


def objective(run: Run, tokenizer: Any) -> tuple[type, Any, dict]:
    """Step 3, objective: (Trainer class, collator, its extra arguments): cross-entropy on response
    tokens, or `kd` against the cached teacher top-k."""
    from transformers import Trainer

    collator = ft.collator(tokenizer, run.cfg.batching)
    if run.spec.objective == "kd":
        return kd.OfflineKDTrainer, kd.WithTeacher(collator), {"kd": run.cfg.kd}
    return Trainer, collator, {}


def train(run: Run, model: Any, tokenizer: Any, data: Data) -> Trained:
    """Step 4, train: transformers' Trainer from the newest complete checkpoint under the run folder,
    then a last validation; the trained model gathered in one piece on the main process (FSDP)."""
    start = time.perf_counter()
    _, args = resolved(run.params, run.name, run.run_dir, run.dev, run.world_size, len(data.train))
    trainer_class, collator, extra = objective(run, tokenizer)
    resume = progress.last_complete_checkpoint(Path(args.output_dir))
    main = _rank() == 0
    curves = progress.LossCurves(run.run_dir / "live", progress.checkpoint_step(resume)) if main else None
    timer = progress.StepTimer()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=ft.ExampleDataset(data.train),
        eval_dataset={name: ft.ExampleDataset(ex) for name, ex in data.evals.items()},
        data_collator=collator,
        callbacks=[timer, curves] if curves else [timer],
        **extra,
    )
    if sharded(run.cfg) != trainer.is_fsdp_enabled:
        raise InputError(
            f"finetune.accelerate_config={run.cfg.accelerate_config} but accelerate runs "
            f"{trainer.accelerator.distributed_type}; FSDP runs only in processes that `accelerate launch` "
            "started on GPUs: set finetune.num_processes > 1 on a GPU machine, or use configs/accelerate/ddp.yaml"
        )
    if resume:
        log.info("resuming from %s", resume)
    resumed_tokens = progress.tokens_at(resume)  # read now: the trainer rotates old checkpoints away
    result = trainer.train(resume_from_checkpoint=resume)
    final = trainer.evaluate()
    pruned = run.params.paths.model_dir("pruned")
    trained = whole(trainer, pruned, run.run_dir / "final", run.method) if sharded(run.cfg) else model
    seconds = time.perf_counter() - start
    return Trained(trained, trainer, args, result, final, resume, resumed_tokens, timer, curves, seconds)


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def results(run: Run, t: Trained, data: Data) -> dict | None:
    """Step 5, results: the run's metrics (None on the non-main processes of a distributed run)."""
    if not t.trainer.is_world_process_zero() or t.curves is None:
        return None
    state, runtime = t.trainer.state, t.result.metrics["train_runtime"]
    final = t.final
    return {
        "arm": run.name,
        "data": run.spec.data,
        "objective": run.spec.objective,
        "method": run.method,
        "rendering": run.cfg.rendering,
        "seed": arm_seed(run.cfg, run.name),
        **ft.trainable_summary(t.model),
        "batching": run.cfg.batching,
        "num_processes": run.world_size,
        "sharding": "fsdp" if t.trainer.is_fsdp_enabled else None,  # what accelerate actually ran
        "bf16": t.args.bf16,
        "device": run.dev,
        "precision": precision_record(run.cfg.precision, "bf16" if t.args.bf16 else "fp32"),
        "resumed_from_step": progress.checkpoint_step(t.resume),
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 3),
        "tokens_seen": int(state.num_input_tokens_seen),
        "train_rows": len(data.train),
        "val_rows": len(data.evals["val"]),
        "encode": data.counts,
        "train_loss_last": progress.last_logged(state.log_history, "loss"),
        "train_loss_mean": round(t.result.training_loss, 4),
        "val_loss": round(final["eval_val_loss"], 4),
        "val_original_loss": round(final.get("eval_val_original_loss", final["eval_val_loss"]), 4),
        "train_seconds": round(runtime, 2),
        "eval_steps": t.args.eval_steps,
        "save_steps": t.args.save_steps,
        "share_outside_optimizer_steps": round(1 - t.timer.seconds / runtime, 3),
        # this run's tokens only: a resumed run trained on the tokens after its checkpoint
        "tokens_per_second": round((state.num_input_tokens_seen - t.resumed_tokens) / runtime, 1),
        "wall_seconds": round(t.seconds, 2),
    }


HEADLINE = ("steps", "tokens_seen", "train_loss_last", "val_loss", "val_original_loss", "tokens_per_second")
