"""`speculate`: speculative decoding with the base model as target, one speculate@<draft> per draft."""

from __future__ import annotations

from pydantic import Field, field_validator

from sdd.config.base import Section
from sdd.config.engine import EngineParams
from sdd.errors import check_names


class SpeculatePrompts(Section):
    """Held-out prompts: rows of prepared datasets that finetune's validation split kept out of training."""

    datasets: list[str] = Field(default=["gsm8k", "alpaca"], min_length=1)
    per_dataset: int = Field(default=2, gt=0)
    max_tokens: int = Field(default=48, gt=0)


class SpeculateParams(Section):
    target: str = "base"
    # Drafts besides every fine-tuned arm and merge recipe (which always are): name -> dir under
    # paths.models. `skip` narrows: the named drafts' stages record "skipped" and start no engine.
    drafts: dict[str, str] = {"pruned": "pruned"}
    skip: list[str] = ["sft", "kd_sdd"]
    num_speculative_tokens: int = Field(default=4, ge=1, le=16)
    temperature: float = Field(default=0.0, ge=0.0)
    prompts: SpeculatePrompts = SpeculatePrompts()
    engine_args: EngineParams = EngineParams()

    @field_validator("engine_args")
    @classmethod
    def _one_engine(cls, value: EngineParams) -> EngineParams:
        if value.data_parallel_size != 1:
            raise ValueError(
                "speculate.engine_args.data_parallel_size must be 1: acceptance is measured on one target + draft "
                "engine (data parallelism is for distill.engine_args)"
            )
        return value

    @field_validator("drafts")
    @classmethod
    def _draft_names(cls, value: dict[str, str]) -> dict[str, str]:
        check_names("draft", value)
        return value
