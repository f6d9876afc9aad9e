"""Pure tensor functions on next-token logits and masks: KL, top-1 agreement, masked means,
padding-aware positions. No I/O; callers choose dtype/device. Used by layer selection
(`kl_to_base`), fidelity evaluation and distillation losses.
"""

from __future__ import annotations

import torch

from sdd.errors import InputError


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore padding, so left- and right-padded rows see the same rotary angles."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def kl_per_token(base_logits: torch.Tensor, model_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_base || P_model) per position, in nats, over the last (vocabulary) dimension.

    KL(P||Q) = sum_v P(v) (log P(v) - log Q(v)) (Kullback & Leibler 1951). Computed in float32 from
    log-softmax for stability. Shapes (..., V) -> (...).
    """
    base = torch.log_softmax(base_logits.float(), dim=-1)
    model = torch.log_softmax(model_logits.float(), dim=-1)
    return (base.exp() * (base - model)).sum(dim=-1).clamp_min(0.0)


def top1_agreement(base_logits: torch.Tensor, model_logits: torch.Tensor) -> torch.Tensor:
    """1.0 where both models' most likely next token is the same, else 0.0. Shapes (..., V) -> (...)."""
    return (base_logits.argmax(dim=-1) == model_logits.argmax(dim=-1)).float()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of `values` where `mask` is true (e.g. the attention mask of real tokens)."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    if count == 0:
        raise InputError("masked_mean over an empty mask: no real tokens to average")
    return float((values * mask).sum() / count)
