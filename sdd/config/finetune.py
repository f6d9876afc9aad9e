"""`finetune`: recovery fine-tuning, one finetune@<arm> stage per arm.

An arm names its data (dataset -> `original` prepared response or `distilled` selected response),
its objective (`sft` cross-entropy or `kd` distillation from the base model's top-k logits) and,
optionally, its method (`lora`, `full`, `last_layers`; default `finetune.method`). Every other
training setting is shared by all arms, so arms differ in nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from sdd.config.base import Dtype, Section
from sdd.errors import check_names

ArmKind = Literal["original", "distilled"]
Objective = Literal["sft", "kd"]
Method = Literal["lora", "full", "last_layers"]


class LoraParams(Section):
    rank: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], min_length=1
    )


class KDParams(Section):
    """Logit distillation: loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE."""

    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    temperature: float = Field(default=1.0, gt=0.0)


class LastLayersParams(Section):
    n: int = Field(default=3, gt=0)


class ArmParams(Section):
    data: dict[str, ArmKind] = Field(min_length=1)
    objective: Objective = "sft"
    method: Method | None = None  # None: finetune.method
    seed: int | None = None  # None: finetune.seed. Data order and LoRA init only (the validation split stays shared):
    # arms that differ only in `seed` are replicates: the report averages them per item and resamples seeds
    control: str | None = None  # the arm (or model) this one is compared with in the report, e.g. sdd -> sft

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if (
            isinstance(value, dict)
            and "data" not in value
            and value
            and set(value.values()) <= {"original", "distilled"}
        ):
            raise ValueError(
                f"an arm lists its datasets under `data`: write `{{data: {value}}}` "
                "(optionally with `objective: sft|kd` and `method: lora|full|last_layers`)"
            )
        return value


ORIGINAL = {"gsm8k": "original", "alpaca": "original"}
DISTILLED = {"gsm8k": "distilled", "alpaca": "distilled"}


class FinetuneParams(Section):
    arms: dict[str, ArmParams] = {
        "sft": ArmParams(data=ORIGINAL),
        "sdd": ArmParams(data=DISTILLED, control="sft"),
        "kd_sdd": ArmParams(data=DISTILLED, objective="kd", control="sdd"),
    }
    method: Method = "lora"
    lora: LoraParams = LoraParams()
    last_layers: LastLayersParams = LastLayersParams()
    kd: KDParams = KDParams()
    rendering: Literal["chat", "plain"] = "plain"  # plain text or the chat template (sdd/data/examples.py)
    max_seq_len: int = Field(default=512, gt=8)
    overlong: Literal["truncate", "drop"] = "truncate"
    batching: Literal["padding_free", "padded"] = "padding_free"
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=6, gt=0)
    batch_size: int = Field(default=4, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 0
    eval_steps: int | None = Field(default=None, gt=0)  # None: auto_interval
    save_steps: int | None = Field(default=None, gt=0)
    num_processes: int = Field(default=1, ge=1)  # per machine
    num_machines: int = Field(default=1, ge=1)
    accelerate_config: str = "configs/accelerate/ddp.yaml"  # how > 1 processes share the work (ddp | fsdp)

    save_dtype: Dtype = "bfloat16"

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, value: dict[str, ArmParams]) -> dict[str, ArmParams]:
        check_names("arm", value)
        return value

    def training_settings(self) -> dict[str, Any]:
        """Everything an arm trains with except its data: identical for every arm by construction."""
        return self.model_dump(exclude={"arms"})


# Free functions, not section methods: the params trace counts calling a section's method as reading
# the whole section, and finetune@<arm> declares only the keys it reads.
def world_size(cfg: FinetuneParams) -> int:
    """Training processes in all: `num_processes` on each of `num_machines`."""
    return cfg.num_processes * cfg.num_machines


def sharded(cfg: FinetuneParams) -> bool:
    """Whether the weights, gradients and optimizer state are split over the processes: the
    accelerate config's `distributed_type` is FSDP (shipped: configs/accelerate/fsdp.yaml)."""
    path = Path(cfg.accelerate_config)
    if world_size(cfg) == 1 or not path.is_file():
        return False
    return (yaml.safe_load(path.read_text()) or {}).get("distributed_type") == "FSDP"
