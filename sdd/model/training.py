"""Recovery fine-tuning core: chat-rendered examples with the loss on response tokens only, a
validation split shared by every arm, collators, the transformers `Trainer` + peft set-up, and the
`kd` objective (teacher top-k log-probabilities attached to each example, `DistillationTrainer`).

    from sdd.model import training as ft
    args = ft.training_arguments(params.finetune, output_dir, "cpu")
    model = ft.apply_method(model, params.finetune, "lora")

(Encoding rows into examples and the held-out split: sdd/data/examples.py.)

The stage (`stages/finetune.py`) reads files and writes the checkpoint; nothing here touches an
artifact path. The training loop is transformers' `Trainer` (no hand-written loop).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from sdd.config.finetune import FinetuneParams, KDParams
from sdd.data.examples import IGNORE
from sdd.errors import InputError

log = logging.getLogger(__name__)


def collator(tokenizer, batching: str):
    """padding_free: the batch is one row of concatenated examples whose position_ids restart per
    example (transformers derives a block-diagonal attention mask from them); padded: right-padded
    rows with an attention mask, padding labels IGNORE."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if batching == "padding_free":
        return DataCollatorWithFlattening(separator_id=IGNORE)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE, return_tensors="pt")


def use_bf16(precision: str) -> bool:
    """bf16 autocast (fp32 master weights and optimizer state) for `finetune.precision`; `auto`
    where the device computes bf16 natively (sdd.hardware.resolve_precision)."""
    from sdd.hardware import resolve_precision

    return resolve_precision(precision) == "bf16"


def total_steps(cfg: FinetuneParams, train_examples: int, world_size: int = 1) -> int:
    """Optimizer steps of a run: `max_steps`, else the epochs over the examples."""
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(math.ceil(train_examples / (cfg.batch_size * world_size)) / cfg.grad_accum)
    return max(1, math.ceil(cfg.epochs * per_epoch))


def auto_interval(steps: int) -> int:
    """Validation and checkpoint interval for a run of `steps`: a quarter of it, at least 4 steps
    (each validation is a forward pass over the held-out rows; each checkpoint writes the
    trainable weights and their optimizer state)."""
    return max(4, math.ceil(steps / 4))


def training_arguments(
    cfg: FinetuneParams,
    output_dir: str,
    device: str,
    world_size: int = 1,
    steps: int | None = None,
    seed: int | None = None,
):
    """The transformers TrainingArguments for a `finetune` section; arms share every value but
    output_dir (and, with epochs instead of max_steps, the auto intervals of their run length)."""
    from transformers import TrainingArguments

    interval = auto_interval(steps or cfg.max_steps or 1)
    return TrainingArguments(
        output_dir=output_dir,
        seed=cfg.seed if seed is None else seed,  # an arm's replicate seed (finetune.arms.<arm>.seed)
        data_seed=cfg.seed if seed is None else seed,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.schedule,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a fraction of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=use_bf16(cfg.precision),
        use_cpu=device == "cpu",
        ddp_backend=("gloo" if device == "cpu" else "nccl") if world_size > 1 else None,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps or interval,
        save_strategy="steps",
        save_steps=cfg.save_steps or cfg.eval_steps or interval,
        save_total_limit=2,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def apply_method(model: Any, cfg: FinetuneParams, method: str | None = None) -> Any:
    """LoRA (peft) on the configured modules; `full`: every weight; `last_layers`: the last
    `cfg.last_layers.n` decoder layers, the final norm and the LM head (full weights, no adapter).
    With tied embeddings the LM head IS the input embedding matrix, so training it changes both.

    The KV cache is switched off (the Trainer does it too, `TrainingArguments.use_cache=False`):
    with a cache, transformers does not derive the per-example attention mask from restarting
    position ids, so a padding-free batch would let every example attend to the ones packed before
    it (measured on a tiny Llama: logits off by ~0.5 with the cache, equal without)."""
    model.config.use_cache = False
    method = method or cfg.method
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "last_layers":
        return train_last_layers(model, cfg.last_layers.n)
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def train_last_layers(model: Any, n: int) -> Any:
    decoder = model.get_decoder()
    layers = decoder.layers
    if n > len(layers):
        raise InputError(f"finetune.last_layers.n={n} but the model has {len(layers)} decoder layers; lower it")
    model.requires_grad_(False)
    for layer in layers[len(layers) - n :]:
        layer.requires_grad_(True)
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise InputError(
            f"{type(model).__name__}: no final norm at `{type(decoder).__name__}.norm`; use method lora or full"
        )
    norm.requires_grad_(True)
    model.get_output_embeddings().requires_grad_(True)
    return model


def trainable_summary(model: Any) -> dict:
    """How many parameters (and tensors) train, and the share of the model they are, for the metrics."""
    params = list(model.parameters())  # tied weights appear once
    trained = [p for p in params if p.requires_grad]
    total = sum(p.numel() for p in params)
    count = sum(p.numel() for p in trained)
    return {
        "trainable_parameters": count,
        "trainable_tensors": len(trained),
        "trainable_share": round(count / total, 4),
    }


TEACHER_KEYS = ("teacher_ids", "teacher_logprobs", "teacher_rest")


class ExampleDataset(torch.utils.data.Dataset):
    """Encoded examples as a map-style dataset: the model inputs (and teacher tensors) of each."""

    KEYS = ("input_ids", "labels", *TEACHER_KEYS)

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return {k: v for k, v in self.examples[i].items() if k in self.KEYS}


def attach_teacher(examples: list[dict], lookup: Any) -> list[dict]:
    """Each example with its teacher's top-k at its (possibly truncated) response tokens.

    `lookup(example)` returns the teacher row (sdd.model.teacher.Row) of that example. The teacher's
    stored tokens must equal the example's response tokens: otherwise the text or the tokenizer
    changed after the teacher logits were computed, and distilling would misalign every position."""
    out = []
    for ex in examples:
        tokens = [t for t in ex["labels"][1:] if t != IGNORE]
        row = lookup(ex)
        if row.tokens[: len(tokens)].tolist() != tokens:
            raise InputError(
                f"teacher logits for row {ex['id']!r} were computed on other tokens than the training text "
                f"(data or tokenizer changed since); re-run `dvc repro` so the teacher_logits stages recompute"
            )
        m = len(tokens)
        out.append(
            {
                **ex,
                "teacher_ids": row.topk_ids[:m],
                "teacher_logprobs": row.topk_logprobs[:m],
                "teacher_rest": row.rest_logmass[:m],
            }
        )
    return out


class WithTeacher:
    """Wraps a collator: the teacher tensors of the batch's examples are concatenated in example
    order, which is the row-major order of the batch's response positions (padded or flattened)."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, features: list[dict]) -> dict:
        batch = self.base([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        for key in TEACHER_KEYS:
            batch[key] = torch.cat([f[key] for f in features])
        return batch


class DistillationTrainer(Trainer):
    """`Trainer` whose loss is `topk_kd_loss` on response tokens against precomputed teacher top-k.

    TRL's GKD/distillation trainers run the teacher model during training; here the teacher's
    log-probabilities are a cached artifact, so only the loss differs from the SFT arms (same
    optimizer, schedule, batching, checkpoints). Normalised like transformers' causal-LM loss: the
    sum over tokens divided by the tokens of the whole accumulated batch when the Trainer gives it."""

    def __init__(self, *args: Any, kd: KDParams, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kd = kd

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from sdd.model.logits import topk_kd_loss

        teacher_ids, teacher_logprobs, teacher_rest = (inputs.pop(key) for key in TEACHER_KEYS)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        targets = labels[:, 1:]
        mask = targets != IGNORE
        if int(mask.sum()) != teacher_ids.shape[0]:
            raise RuntimeError(
                f"{int(mask.sum())} response tokens in the batch but {teacher_ids.shape[0]} teacher rows"
            )
        per_token = topk_kd_loss(
            outputs.logits[:, :-1][mask],
            targets[mask],
            teacher_ids,
            teacher_logprobs,
            teacher_rest,
            self.kd.alpha,
            self.kd.temperature,
        )
        if num_items_in_batch is not None:
            loss = per_token.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss = per_token.mean()
        return (loss, outputs) if return_outputs else loss


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest Trainer checkpoint that was fully written and is not the run's last step.

    The Trainer writes trainer_state.json last, so a run killed while saving leaves a folder
    without a readable one: skip it. A checkpoint at the final step (saved when save_steps divides
    max_steps) is skipped too: transformers resumes from it by training one step past the end, so
    the run resumes from the one before and repeats those steps exactly."""
    found = sorted(Path(folder).glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)
    for checkpoint in found:
        try:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            log.warning("skipping incomplete checkpoint %s (interrupted while saving)", checkpoint)
            continue
        if state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]:
            log.info("skipping %s: it is the last step of its run; resuming from an earlier one", checkpoint)
            continue
        return str(checkpoint)
    return None


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The optimizer step of a Trainer checkpoint folder (`.../checkpoint-<step>`)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else None


def tokens_at(checkpoint: str | None) -> int:
    """Input tokens the run had seen when `checkpoint` was saved (0 without one): a resumed run's
    throughput counts only the tokens it trained on itself."""
    if not checkpoint:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0))


# Trainer log key -> dvclive curve name (files plots/metrics/<name>.tsv).
CURVES = {"loss": "train/loss", "eval_val_loss": "val/loss", "eval_val_original_loss": "val_original/loss"}


class StepTimer(TrainerCallback):
    """Seconds spent inside optimizer steps (forward, backward, update); the rest of `train()` is
    validation, checkpoints, logging and data loading."""

    def __init__(self) -> None:
        self.seconds, self._start = 0.0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._start


class LossCurves(TrainerCallback):
    """dvclive loss curves indexed by optimizer step. (transformers' own DVCLiveCallback advances
    the dvclive step on every log call, so one step's train and validation losses land on
    different x values.) On resume, points logged after the checkpoint are dropped first."""

    def __init__(self, folder: Path, resume_step: int | None):
        from dvclive import Live

        if resume_step is not None:
            for tsv in Path(folder, "plots", "metrics").rglob("*.tsv"):
                lines = tsv.read_text().splitlines()
                kept = lines[:1] + [
                    ln for ln in lines[1:] if int(ln.split("\t")[lines[0].split("\t").index("step")]) <= resume_step
                ]
                tsv.write_text("\n".join(kept) + "\n")
        self.live = Live(dir=str(folder), resume=resume_step is not None, save_dvc_exp=False, dvcyaml=None, report=None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logged = {name: logs[key] for key, name in CURVES.items() if key in (logs or {})}
        if logged:
            self.live.step = state.global_step
            for name, value in logged.items():
                self.live.log_metric(name, value)

    def finish(self) -> None:
        self.live.end()


def last_logged(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return round(values[-1], 4) if values else None
