"""Recovery fine-tuning core: chat-rendered examples with the loss on response tokens only, a
validation split shared by every arm, collators, and the transformers `Trainer` + peft set-up.

    from sdd.model.training import encode_rows, split_by_id, build_trainer
    examples, counts = encode_rows(rows, tokenizer, max_seq_len=512, overlong="truncate")

The stage (`stages/finetune.py`) reads files and writes the checkpoint; nothing here touches an
artifact path. The training loop is transformers' `Trainer` (no hand-written loop).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from sdd.config.finetune import FinetuneParams
from sdd.data.chat import conversation_text, prompt_text
from sdd.errors import InputError

log = logging.getLogger(__name__)

IGNORE = -100  # label value that the causal-LM loss skips (transformers/PyTorch convention)


def encode(tokenizer, instruction: str, context: str | None, response: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one chat-rendered example; labels are IGNORE on every prompt token.

    The prompt is the chat template up to the assistant's turn (`add_generation_prompt`); the
    completion is the rest of the rendered conversation (response, end-of-turn token). They are
    tokenized separately, so the boundary never merges a prompt token with a response token.
    """
    prompt = prompt_text(tokenizer, instruction, context)
    full = conversation_text(tokenizer, instruction, context, response)
    if not full.startswith(prompt):
        raise InputError(
            "the chat template renders the prompt differently with and without the assistant's turn; "
            "a response-only loss needs a template whose generation prompt is a prefix of the conversation"
        )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + list(completion_ids)


def encode_rows(rows: list[dict], tokenizer, max_seq_len: int, overlong: str) -> tuple[list[dict], dict]:
    """Encode rows (keys id, instruction, context, response); over-long rows are truncated or dropped.

    A row whose prompt alone fills `max_seq_len` has no response token left to learn from and is
    dropped either way. Returns the examples and counts of what happened (for metrics).
    """
    examples: list[dict] = []
    counts: Counter[str] = Counter()
    for row in rows:
        ids, labels = encode(tokenizer, row["instruction"], row["context"], row["response"])
        if len(ids) > max_seq_len:
            counts["overlong"] += 1
            if overlong == "drop":
                counts["dropped_overlong"] += 1
                continue
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            if all(label == IGNORE for label in labels[1:]):
                counts["dropped_prompt_too_long"] += 1
                continue
            counts["truncated"] += 1
        examples.append({"id": row["id"], "input_ids": ids, "labels": labels})
    counts["kept"] = len(examples)
    counts["tokens"] = sum(len(e["input_ids"]) for e in examples)
    counts["response_tokens"] = sum(sum(label != IGNORE for label in e["labels"]) for e in examples)
    return examples, dict(counts)


def split_by_id(ids: list[str], fraction: float, seed: int) -> set[str]:
    """The held-out ids: the `fraction` (at least one) with the smallest hash of (seed, id).

    It depends only on the ids, so every arm holds out the same rows of a dataset whether it
    trains on the original or the distilled response (distillation keeps the prepared id).
    """
    if len(ids) < 2:
        raise InputError(f"{len(ids)} row(s): need at least 2 to hold one out for validation")
    n = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:n])


def collator(tokenizer, batching: str):
    """padding_free: the batch is one row of concatenated examples whose position_ids restart per
    example (transformers derives a block-diagonal attention mask from them); padded: right-padded
    rows with an attention mask, padding labels IGNORE."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if batching == "padding_free":
        return DataCollatorWithFlattening(separator_id=IGNORE)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE, return_tensors="pt")


def use_bf16(precision: str, device: str) -> bool:
    """bf16 autocast (fp32 master weights and optimizer state); `auto`: on CPU (AMX makes it ~3-4x
    faster here) and on CUDA with bf16 support."""
    if precision == "auto":
        return device == "cpu" or torch.cuda.is_bf16_supported()
    return precision == "bf16"


def training_arguments(cfg: FinetuneParams, output_dir: str, device: str, world_size: int = 1):
    """The transformers TrainingArguments for a `finetune` section; arms share every value but output_dir."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        seed=cfg.seed,
        data_seed=cfg.seed,
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
        bf16=use_bf16(cfg.precision, device),
        use_cpu=device == "cpu",
        ddp_backend=("gloo" if device == "cpu" else "nccl") if world_size > 1 else None,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def apply_method(model: Any, cfg: FinetuneParams) -> Any:
    """LoRA (peft) on the configured modules, or the whole model trainable for `full`."""
    if cfg.method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


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


# Trainer log key -> dvclive curve name (files plots/metrics/<name>.tsv).
CURVES = {"loss": "train/loss", "eval_val_loss": "val/loss", "eval_val_original_loss": "val_original/loss"}


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
