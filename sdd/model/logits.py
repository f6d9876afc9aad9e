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


def coarse_logprobs(topk_logprobs: torch.Tensor, rest_logmass: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of k + 1 outcomes: the top-k tokens and "any other token". [N, k], [N] -> [N, k + 1].

    The rest is clamped at -1e4 (exp underflows to exactly 0), so an empty rest never yields inf - inf."""
    return torch.cat([topk_logprobs.float(), rest_logmass.float().clamp_min(-1e4).unsqueeze(-1)], dim=-1)


def topk_kd_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_rest: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Per-token distillation loss: alpha * T^2 * KL_T(teacher || student) + (1 - alpha) * CE(target).

    Both distributions are coarse-grained to the teacher's top-k support plus one "rest" outcome
    (its mass is stored with the top k, the student's is the log-sum-exp of its other tokens), then
    tempered: log_softmax(coarse / T). At T = 1 this is the exact KL between the two coarse-grained
    distributions (a lower bound of the full-vocabulary KL, equal when the teacher's rest mass is
    negligible); identical distributions give 0. T^2 keeps the gradient scale of the soft term
    independent of T (Hinton et al. 2015). Shapes: logits [N, V], targets [N], teacher [N, k], [N, k], [N].
    """
    logp = torch.log_softmax(student_logits.float(), dim=-1)
    ce = -logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    if alpha == 0.0:
        return ce
    ids = teacher_ids.long()
    student_rest = logp.scatter(-1, ids, float("-inf")).logsumexp(dim=-1)
    student = torch.log_softmax(coarse_logprobs(logp.gather(-1, ids), student_rest) / temperature, dim=-1)
    teacher = torch.log_softmax(coarse_logprobs(teacher_logprobs, teacher_rest) / temperature, dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(dim=-1)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce
