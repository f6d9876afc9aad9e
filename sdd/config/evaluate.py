"""`evaluate`: lm-eval settings shared by every evaluate@<model> stage, the models, and fidelity."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sdd.config.base import ComputeDtype, Section
from sdd.config.datasets import DatasetParams
from sdd.errors import check_names, did_you_mean


class EvalTaskParams(Section):
    """One leaderboard task: few-shot examples, items per lm-eval task (MMLU: per subject), subjects."""

    shots: int = Field(ge=0)
    limit: int | None = Field(default=None, gt=0)
    subjects: list[str] | None = None  # MMLU only: null = all 57
    max_new_tokens: int | None = Field(default=None, gt=0)  # generation tasks (gsm8k) only: null = lm-eval's 256


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
            source="openai/gsm8k", config="main", split="test", revision="main", format="gsm8k", limit=6, seed=0
        ),
        "dolly_hhrlhf": DatasetParams(
            source="mosaicml/dolly_hhrlhf",
            config="default",
            split="train",
            revision="main",
            format="dolly_hhrlhf",
            limit=6,
            seed=0,
        ),
    }
    max_new_tokens: int = Field(default=32, gt=0)
    batch_size: int = Field(default=8, gt=0)


class MeasuresParams(Section):
    """Held-out measures beside the task scores (sdd/eval/measures.py): the NLL of held-out gold
    responses (every dataset's validation rows, the fidelity prompts' answers) and KL / NLL on plain text."""

    plain_tasks: list[str] = ["hellaswag", "winogrande"]  # plain text: the last rows of these tasks' eval split
    plain_rows: int = Field(default=8, ge=0)  # per task (never rows an evaluation task scores)
    max_tokens: int = Field(default=128, gt=8)  # a longer row is cut
    batch_size: int = Field(default=8, gt=0)


DEMO_MMLU_SUBJECTS = [
    "abstract_algebra",
    "college_biology",
    "high_school_mathematics",
    "computer_security",
    "high_school_psychology",
    "world_religions",
]


def _default_tasks() -> dict[str, EvalTaskParams]:
    return {
        "arc_challenge": EvalTaskParams(shots=0, limit=12),
        "hellaswag": EvalTaskParams(shots=0, limit=12),
        "mmlu": EvalTaskParams(shots=0, limit=1, subjects=DEMO_MMLU_SUBJECTS),
        "truthfulqa_mc2": EvalTaskParams(shots=0, limit=1),
        "winogrande": EvalTaskParams(shots=0, limit=12),
        "gsm8k": EvalTaskParams(shots=0, limit=1, max_new_tokens=48),
    }


class EvaluateParams(Section):
    # Models evaluated besides every fine-tuned arm and merge recipe (which always are): name -> dir
    # under paths.models. `skip` narrows: the named models' stages record "skipped" and compute nothing.
    models: dict[str, str] = {"base": "base", "pruned": "pruned"}
    skip: list[str] = []
    tasks: dict[str, EvalTaskParams] = Field(default_factory=_default_tasks, min_length=1)  # names: sdd/eval/tasks.py
    backend: Literal["hf", "vllm"] = "hf"
    dtype: ComputeDtype = "auto"
    batch_size: int = Field(default=8, gt=0)
    chat_template: bool = False
    seed: int = 0
    vllm: VllmEvalParams = VllmEvalParams()
    fidelity: FidelityParams = FidelityParams()
    measures: MeasuresParams = MeasuresParams()

    @field_validator("tasks")
    @classmethod
    def _subjects(cls, value: dict[str, EvalTaskParams]) -> dict[str, EvalTaskParams]:
        from sdd.eval.tasks import TASKS  # the one list of task names

        for task, cfg in value.items():
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}{did_you_mean(task, TASKS)}; choose from {sorted(TASKS)}")
            if cfg.max_new_tokens is not None and not TASKS[task].generation:
                raise ValueError(f"{task}.max_new_tokens: only generation tasks (gsm8k) generate; remove the key")
            if cfg.subjects is not None and task != "mmlu":
                raise ValueError(f"{task}.subjects: only mmlu has subjects; remove the key")
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, str]) -> dict[str, str]:
        check_names("model", value)
        return value
