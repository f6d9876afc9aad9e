"""Generation settings shared by `distill` and `speculate`: how a vLLM engine is built, how it samples."""

from __future__ import annotations

from pydantic import Field

from sdd.config.base import ComputeDtype, Section


class EngineParams(Section):
    """How a vLLM `LLM` is built (sdd/generate/engines.py `build_vllm`); the `hf` engine uses dtype and seed."""

    dtype: ComputeDtype = "auto"
    max_model_len: int = Field(default=1024, gt=0)
    gpu_memory_utilization: float = Field(default=0.15, gt=0.0, le=1.0)
    enforce_eager: bool = True
    tensor_parallel_size: int = Field(default=1, ge=1)
    data_parallel_size: int = Field(default=1, ge=1)  # distill only: engines side by side
    seed: int = 0


class SamplingParams(Section):
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=320, gt=0)
    n: int = Field(default=1, ge=1)
