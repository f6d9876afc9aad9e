"""Fidelity of a model to the reference (base) model on held-out prompts.

    table = reference_table(base, tok, rows, max_new_tokens=48, batch_size=8)   # stage fidelity_reference
    compare(base, model, stored_batches(table, pad_id, batch_size=8))           # in evaluate@<model>
    # {"kl": ..., "top1_agreement": ..., "perplexity": ...}

The reference model writes a greedy continuation of every prompt once (the `fidelity_reference`
artifact: token ids); every evaluated model and the reference then read prompt + continuation
(teacher forcing, one forward pass each) and are compared on the continuation's positions:
KL(P_base || P_model) per token, top-1 agreement, and the model's perplexity on the base's
continuation (the distribution shift self-distillation is meant to avoid; Thangarasa et al. 2024
argue it from this shift, SDFT, Yang et al. 2024, measure it). Values in, values out (no I/O).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandera.pandas as pa
import torch
from pandera.pandas import Check, Column

from sdd.config.datasets import DatasetParams
from sdd.config.evaluate import FidelityParams
from sdd.data import sources
from sdd.data.adapters import adapt_rows, sample
from sdd.data.chat import prompt_text
from sdd.errors import InputError
from sdd.eval.per_prompt import FIDELITY_PER_PROMPT, per_prompt_file  # noqa: F401 (re-exported)
from sdd.model.logits import kl_per_token, position_ids, top1_agreement

REFERENCE_FILE = "fidelity.reference.parquet"  # under paths.eval (a dot: no model can be named so)

# The fidelity_reference artifact's contract. It lives with the code that writes and reads it
# rather than in sdd/data/schemas.py, which every data stage depends on: a new artifact here
# re-runs only the evaluation stages.
FIDELITY_REFERENCE = pa.DataFrameSchema(
    {
        "prompt_set": Column(str, checks=Check(lambda s: s.str.len() > 0, element_wise=False)),
        "id": Column(str, checks=Check(lambda s: s.str.len() > 0, element_wise=False)),
        "prompt_ids": Column(object),  # the chat-rendered prompt's token ids
        "continuation_ids": Column(object),  # the reference's greedy continuation (its EOS included)
    },
    checks=[Check(lambda df: df["prompt_ids"].map(len).gt(0), element_wise=False, name="prompt_not_empty")],
    strict=True,
    ordered=True,
    name="fidelity_reference",
    metadata={"version": 1},
)


def reference_file(eval_dir: str | Path) -> Path:
    return Path(eval_dir) / REFERENCE_FILE


@dataclass
class Continuations:
    input_ids: torch.Tensor  # (B, L), left-padded prompt + continuation (padded after EOS)
    attention_mask: torch.Tensor  # (B, L)
    continuation: torch.Tensor  # (B, L) bool: positions holding continuation tokens to score
    prompt_width: int


def render_prompts(tokenizer, rows: list[dict]) -> list[str]:
    """Chat-render each canonical row (instruction, context) as a user turn awaiting the reply."""
    return [prompt_text(tokenizer, row["instruction"], row.get("context")) for row in rows]


@torch.no_grad()
def reference_sequences(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int
) -> list[Continuations]:
    """Greedy continuations of the reference model, kept as scored batches."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    batches = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos
        )
        width = enc["input_ids"].shape[1]
        gen = out[:, width:]
        # Keep tokens up to and including the first EOS; what generate pads after it is not text.
        ended = (gen == eos).long().cumsum(-1)
        valid = (ended == 0) | ((ended == 1) & (gen == eos))
        mask = torch.cat([enc["attention_mask"], valid.long()], dim=1)
        cont = torch.cat([torch.zeros_like(enc["attention_mask"], dtype=torch.bool), valid], dim=1)
        batches.append(Continuations(out, mask, cont, width))
    return batches


@torch.no_grad()
def _logits(model, batch: Continuations) -> torch.Tensor:
    device = next(model.parameters()).device
    mask = batch.attention_mask.to(device)
    out = model(input_ids=batch.input_ids.to(device), attention_mask=mask, position_ids=position_ids(mask))
    # Position t predicts token t+1: keep the predictions of the continuation tokens.
    return out.logits[:, batch.prompt_width - 1 : -1].float().cpu()


def compare(reference, model, batches: list[Continuations], ids: list[tuple[str, str]] | None = None) -> dict:
    """Token-weighted KL, top-1 agreement and model perplexity over all continuation tokens, and
    `per_prompt`: each prompt's token count and sums (`ids`: its (prompt set, id), in batch order),
    the unit a paired bootstrap resamples (`sdd.eval.stats.paired_ratio_bootstrap`)."""
    per_prompt: list[dict] = []
    names = iter(ids) if ids is not None else None
    for batch in batches:
        ref = _logits(reference, batch)
        mod = ref if model is reference else _logits(model, batch)
        targets = batch.input_ids[:, batch.prompt_width :].cpu()
        mask = batch.continuation[:, batch.prompt_width :].cpu().double()
        nll = -torch.log_softmax(mod, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        ref_nll = -torch.log_softmax(ref, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        sums = {
            "kl_sum": (kl_per_token(ref, mod).double() * mask).sum(dim=1),
            "top1_sum": (top1_agreement(ref, mod).double() * mask).sum(dim=1),
            "nll_sum": (nll.double() * mask).sum(dim=1),
            "ref_nll_sum": (ref_nll.double() * mask).sum(dim=1),
        }
        for i, count in enumerate(mask.sum(dim=1).tolist()):
            prompt_set, row_id = next(names) if names is not None else ("", str(len(per_prompt)))
            per_prompt.append(
                {"prompt_set": prompt_set, "id": row_id, "tokens": int(count)}
                | {k: float(v[i]) for k, v in sums.items()}
            )
    tokens = sum(p["tokens"] for p in per_prompt)
    if tokens == 0:
        raise InputError(
            "the reference model produced no continuation tokens to compare on; raise evaluate.fidelity.max_new_tokens"
        )
    total = {k: sum(p[k] for p in per_prompt) for k in ("kl_sum", "top1_sum", "nll_sum", "ref_nll_sum")}
    return {
        "kl": total["kl_sum"] / tokens,
        "top1_agreement": total["top1_sum"] / tokens,
        "perplexity": math.exp(total["nll_sum"] / tokens),
        "reference_perplexity": math.exp(total["ref_nll_sum"] / tokens),
        "tokens": tokens,
        "prompts": len(per_prompt),
        "per_prompt": per_prompt,
    }


def fidelity_rows(prompts: dict[str, DatasetParams], mirror: Path | None, max_chars: int) -> list[dict]:
    """The held-out prompts (canonical rows), the same for every model."""
    rows = []
    for name, ds in prompts.items():
        adapted = adapt_rows(sources.read_rows(ds, mirror), name, ds.format, max_chars)
        if not adapted.accepted:
            raise InputError(f"evaluate.fidelity.prompts.{name}: no usable rows in {ds.source}")
        rows += sample(adapted.accepted, ds.limit, ds.seed)
    return rows


def reference_table(model: Any, tokenizer: Any, rows: list[dict], max_new_tokens: int, batch_size: int) -> list[dict]:
    """The reference's greedy continuation of every row's prompt, as token ids (prompt set, row id,
    prompt ids, continuation ids with its EOS): what `stored_batches` rebuilds the batches from."""
    batches = reference_sequences(model, tokenizer, render_prompts(tokenizer, rows), max_new_tokens, batch_size)
    table, row = [], iter(rows)
    for batch in batches:
        width = batch.prompt_width
        for ids, mask, cont in zip(batch.input_ids, batch.attention_mask, batch.continuation, strict=True):
            source = next(row)
            table.append(
                {
                    "prompt_set": source["dataset"],
                    "id": source["id"],
                    "prompt_ids": ids[:width][mask[:width].bool()].tolist(),
                    "continuation_ids": ids[width:][cont[width:]].tolist(),
                }
            )
    return table


def stored_batches(table: list[dict], pad_id: int, batch_size: int) -> list[Continuations]:
    """The scored batches of `reference_sequences`, rebuilt from the stored ids: the same groups of
    `batch_size` rows, prompts left-padded to the group's widest, continuations right-padded."""
    batches = []
    for start in range(0, len(table), batch_size):
        part = table[start : start + batch_size]
        prompts = [[int(t) for t in r["prompt_ids"]] for r in part]
        conts = [[int(t) for t in r["continuation_ids"]] for r in part]
        width, gen = max(map(len, prompts)), max(map(len, conts))
        ids, mask, scored = [], [], []
        for p, c in zip(prompts, conts, strict=True):
            left, right = width - len(p), gen - len(c)
            ids.append([pad_id] * left + p + c + [pad_id] * right)
            mask.append([0] * left + [1] * (len(p) + len(c)) + [0] * right)
            scored.append([False] * width + [True] * len(c) + [False] * right)
        batches.append(Continuations(torch.tensor(ids), torch.tensor(mask), torch.tensor(scored), width))
    return batches


def pad_id(tokenizer: Any) -> int:
    """The id `reference_sequences` pads with (the EOS when the tokenizer has no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def against_reference(
    reference: Any, model: Any, tokenizer: Any, cfg: FidelityParams, reference_dir: Path, table: list[dict]
) -> dict:
    """Fidelity of `model` to the loaded `reference` on the reference's stored continuations, with the
    settings behind the numbers."""
    ids = [(r["prompt_set"], r["id"]) for r in table]
    measured = compare(reference, model, stored_batches(table, pad_id(tokenizer), cfg.batch_size), ids)
    return {
        **measured,
        "reference": str(reference_dir),
        "max_new_tokens": cfg.max_new_tokens,
        "prompt_sets": {k: v.model_dump() for k, v in cfg.prompts.items()},
    }
