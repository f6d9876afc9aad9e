"""`distill`: the base model rewrites the responses of prepared datasets (self-data distillation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdd.config.base import Section
from sdd.config.engine import EngineParams, SamplingParams

DEFAULT_LEAK_PHRASES = (
    "reference answer",
    "reference response",
    "reference solution",
    "the reference",
    "your response",
    "example response",
    "the example above",
    "the given solution",
    "worked solution",
    "the provided solution",
)


class DistillParams(Section):
    datasets: list[str] = ["gsm8k", "alpaca"]
    engine: Literal["vllm", "hf"] = "vllm"
    engine_args: EngineParams = EngineParams()
    sampling: SamplingParams = SamplingParams()
    hf_batch_size: int = Field(default=16, gt=0)
    chunk_size: int = Field(default=256, gt=0)
    leak_phrases: list[str] = list(DEFAULT_LEAK_PHRASES)
    min_length_ratio: float = Field(default=0.3, ge=0.0)
    end_at_answer_line: bool = True  # math: a rewrite ends at its first "#### <number>" line (what follows is a loop)
    budget_ratio: float | None = Field(default=3.0, gt=0.0)
    budget_floor: int = Field(default=96, gt=0)
