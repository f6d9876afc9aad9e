"""The `kd` objective: each example carries the base model's top-k log-probabilities at its response
tokens (precomputed by the teacher_logits stages), and the loss is `sdd.model.logits.topk_kd_loss`.

    lookup = teacher_lookup(paths, {"gsm8k": "distilled"})
    examples = attach_teacher(examples, lookup)
    trainer = OfflineKDTrainer(model=..., args=..., data_collator=WithTeacher(collator), kd=cfg.kd, ...)

Offline: the teacher's log-probabilities are a cached artifact, not a model run during training (TRL's
`DistillationTrainer` and GKD run the teacher live; hence a different name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import Trainer

from sdd.config.finetune import KDParams
from sdd.config.paths import Paths
from sdd.data.examples import IGNORE
from sdd.errors import InputError
from sdd.model.training import TEACHER_KEYS


def teacher_producer(ds: str, kind: str) -> str:
    """The dvc.yaml stage that writes a dataset's teacher logits."""
    return f"teacher_logits@{ds}" if kind == "original" else f"teacher_logits_distilled@{ds}"


def teacher_lookup(paths: Paths, data: Mapping[str, str]) -> Any:
    """example -> its teacher row, over the teacher logits of every dataset of the arm."""
    from sdd.model.teacher import TeacherStore

    stores = [TeacherStore.open(paths.teacher_dir(ds, kind), teacher_producer(ds, kind)) for ds, kind in data.items()]
    by_id = {row: store for store in stores for row in store.index}
    return lambda ex: (by_id.get(ex["id"]) or stores[0]).get(ex["id"])


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


class OfflineKDTrainer(Trainer):
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
        if int(mask.sum()) != teacher_ids.shape[0]:  # a bug in the batching, not in the user's input
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
