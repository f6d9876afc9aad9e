"""The transformers `Trainer` set-up of recovery fine-tuning: TrainingArguments from params, the
method's trainable weights (LoRA, full, last layers), batches (padding-free or padded) and the
examples as a dataset. The loop is transformers' `Trainer`; nothing here touches an artifact path.

    from sdd.model import training as ft
    args = ft.training_arguments(params.finetune, output_dir, "cpu")
    model = ft.apply_method(model, params.finetune, "lora")

Elsewhere: encoding rows and the held-out split (sdd/data/examples.py), the `kd` objective
(sdd/model/kd.py), checkpoints and loss curves (sdd/model/progress.py), the steps of one arm's
run (sdd/model/recipe.py).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from sdd.config.finetune import FinetuneParams
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


TEACHER_KEYS = ("teacher_ids", "teacher_logprobs", "teacher_rest")  # what a `kd` example carries (sdd/model/kd.py)


class ExampleDataset(torch.utils.data.Dataset):
    """Encoded examples as a map-style dataset: the model inputs (and teacher tensors) of each."""

    KEYS = ("input_ids", "labels", *TEACHER_KEYS)

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return {k: v for k, v in self.examples[i].items() if k in self.KEYS}
