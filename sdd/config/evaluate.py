"""`evaluate`: lm-eval settings shared by every evaluate@<model> stage, the models, and fidelity."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field, field_validator

from sdd.config.base import ComputeDtype, Section
from sdd.config.datasets import DatasetParams
from sdd.errors import check_names

Task = Literal["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande", "gsm8k"]
EVAL_TASKS: tuple[str, ...] = typing.get_args(Task)  # sdd/eval/tasks.py TASKS has one spec each


class EvalTaskParams(Section):
    """One leaderboard task: few-shot examples, items per lm-eval task (MMLU: per subject), subjects."""

    shots: int = Field(ge=0)
    limit: int | None = Field(default=None, gt=0)
    subjects: list[str] | None = None  # MMLU only: null = all 57


class VllmEvalParams(Section):
    gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0)
    max_model_len: int = Field(default=4096, gt=0)
    enforce_eager: bool = True
    tensor_parallel_size: int = Field(default=1, ge=1)  # GPUs per model copy
    data_parallel_size: int = Field(default=1, ge=1)  # model copies (lm-eval shards the requests over them, via Ray)


class FidelityParams(Section):
    """Held-out prompts on which each model is compared with the reference (base) model."""

    reference: str = "base"  # model directory under paths.models
    prompts: dict[str, DatasetParams] = {
        "gsm8k_test": DatasetParams(
            source="openai/gsm8k", config="main", split="test", revision="main", format="gsm8k", limit=8, seed=0
        ),
        "dolly_hhrlhf": DatasetParams(
            source="mosaicml/dolly_hhrlhf",
            config="default",
            split="train",
            revision="main",
            format="dolly_hhrlhf",
            limit=8,
            seed=0,
        ),
    }
    max_new_tokens: int = Field(default=32, gt=0)
    batch_size: int = Field(default=8, gt=0)


DEMO_MMLU_SUBJECTS = [
    "abstract_algebra",
    "college_biology",
    "high_school_mathematics",
    "computer_security",
    "high_school_psychology",
    "world_religions",
]


def _default_tasks() -> dict[Task, EvalTaskParams]:
    return {
        "arc_challenge": EvalTaskParams(shots=0, limit=32),
        "hellaswag": EvalTaskParams(shots=0, limit=32),
        "mmlu": EvalTaskParams(shots=0, limit=2, subjects=DEMO_MMLU_SUBJECTS),
        "truthfulqa_mc2": EvalTaskParams(shots=0, limit=4),
        "winogrande": EvalTaskParams(shots=0, limit=32),
        "gsm8k": EvalTaskParams(shots=0, limit=1),
    }


class EvaluateParams(Section):
    # Models evaluated besides every fine-tuned arm and merge recipe (which always are): name -> dir
    # under paths.models. `skip` narrows: the named models' stages record "skipped" and compute nothing.
    models: dict[str, str] = {"base": "base", "pruned": "pruned"}
    skip: list[str] = []
    tasks: dict[Task, EvalTaskParams] = Field(default_factory=_default_tasks, min_length=1)
    backend: Literal["hf", "vllm"] = "hf"
    dtype: ComputeDtype = "auto"
    batch_size: int = Field(default=8, gt=0)
    chat_template: bool = False
    seed: int = 0
    vllm: VllmEvalParams = VllmEvalParams()
    fidelity: FidelityParams = FidelityParams()

    @field_validator("tasks")
    @classmethod
    def _subjects(cls, value: dict[str, EvalTaskParams]) -> dict[str, EvalTaskParams]:
        for task, cfg in value.items():
            if cfg.subjects is not None and task != "mmlu":
                raise ValueError(f"{task}.subjects: only mmlu has subjects; remove the key")
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, str]) -> dict[str, str]:
        check_names("model", value)
        return value
