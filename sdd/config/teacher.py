"""`teacher_logits`: the base model's top-k next-token log-probabilities over training text, the
targets of the `kd` objective (teacher_logits@<ds> on original responses,
teacher_logits_distilled@<ds> on distilled ones)."""

from __future__ import annotations

from pydantic import Field

from sdd.config.base import ComputeDtype, Section


class TeacherLogitsParams(Section):
    # Datasets whose original (`original`) / distilled (`distilled`) responses get teacher logits:
    # one stage each. Every `objective: kd` arm's datasets must be listed (an arm on distilled data
    # also reads the original's, for val_original_loss); [] skips the stages when no arm distils.
    original: list[str] = ["gsm8k", "alpaca"]
    distilled: list[str] = ["gsm8k", "alpaca"]
    top_k: int = Field(default=64, gt=0)
    dtype: ComputeDtype = "auto"
    batch_tokens: int = Field(default=4096, gt=0)
    rows_per_shard: int = Field(default=1024, gt=0)
