"""`finetune`: recovery fine-tuning, one finetune@<arm> stage per arm.

An arm names only its data (dataset -> `original` prepared response or `distilled` selected
response); every training setting is shared by all arms, so the arms differ in their data only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from sdd.config.base import Dtype, Section
from sdd.errors import check_names

ArmKind = Literal["original", "distilled"]


class LoraParams(Section):
    rank: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], min_length=1
    )


class FinetuneParams(Section):
    arms: dict[str, dict[str, ArmKind]] = {
        "sft": {"gsm8k": "original", "alpaca": "original"},
        "sdd": {"gsm8k": "distilled", "alpaca": "distilled"},
        "sdd_gsm8k": {"gsm8k": "distilled"},
        "sdd_alpaca": {"alpaca": "distilled"},
    }
    method: Literal["lora", "full"] = "lora"
    lora: LoraParams = LoraParams()
    max_seq_len: int = Field(default=512, gt=8)
    overlong: Literal["truncate", "drop"] = "truncate"
    batching: Literal["padding_free", "padded"] = "padding_free"
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=8, gt=0)
    batch_size: int = Field(default=8, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 0
    eval_steps: int = Field(default=4, gt=0)
    save_steps: int = Field(default=4, gt=0)
    num_processes: int = Field(default=1, ge=1)
    save_dtype: Dtype = "bfloat16"

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        check_names("arm", value)
        empty = [name for name, data in value.items() if not data]
        if empty:
            raise ValueError(
                f"arms {empty} name no dataset; give each arm at least one `<dataset>: original|distilled`"
            )
        return value

    def training_settings(self) -> dict[str, Any]:
        """Everything an arm trains with except its data: identical for every arm by construction."""
        return self.model_dump(exclude={"arms"})
