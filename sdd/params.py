"""Typed view of `params.yaml`: every stage reads its knobs only through these models.

    from sdd.params import load_params
    params = load_params()            # validates every section, reports all problems at once
    params.prepare.max_rejected_fraction

Each section is a frozen pydantic model with `extra="forbid"`, so a typo in a key, a wrong type
or an out-of-range value fails before any compute with a message that names the key.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MIRROR_ENV = "SDD_DATA_MIRROR"
PARAMS_FILE = "params.yaml"


def check_names(kind: str, names) -> None:
    """Names of datasets, arms, recipes, models and drafts become file and folder names."""
    bad = [name for name in names if not re.fullmatch(r"[A-Za-z0-9_-]+", name)]
    if bad:
        raise ValueError(f"{kind} names {bad} must use letters, digits, '_' or '-' (they become file and folder names)")


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Paths(Section):
    """Artifact directories; `dvc.yaml` templates the same values with `${paths.*}`."""

    sources: str = "data/sources"
    prepared: str = "data/prepared"
    distilled: str = "data/distilled"
    models: str = "data/models"
    metrics: str = "metrics"
    reports: str = "reports"
    eval: str = "data/eval"
    scratch: str = ".sdd-scratch"

    def source_file(self, ds: str) -> Path:
        return Path(self.sources) / f"{ds}.json"

    def prepared_file(self, ds: str) -> Path:
        return Path(self.prepared) / f"{ds}.parquet"

    def rejected_file(self, ds: str) -> Path:
        return Path(self.prepared) / f"{ds}.rejected.parquet"

    def distilled_file(self, ds: str) -> Path:
        return Path(self.distilled) / f"{ds}.parquet"

    def model_dir(self, name: str) -> Path:
        return Path(self.models) / name

    def report_file(self, name: str) -> Path:
        return Path(self.reports) / name

    def eval_samples_file(self, name: str) -> Path:
        return Path(self.eval) / f"{name}.parquet"

    def metrics_file(self, stage: str, name: str | None = None) -> Path:
        return Path(self.metrics) / stage / f"{name or stage}.json"


DTYPES = ("float32", "bfloat16", "float16")


class BaseModelParams(Section):
    """Where the model to prune comes from: `bundled:<name>`, a hub id, or a local directory."""

    source: str = "bundled:smollm2-135m-instruct"
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    trust_remote_code: bool = False
    allow_pickle: bool = False


ADAPTERS = ("alpaca", "dolly", "dolly_hhrlhf", "gsm8k", "openmath")


class DatasetParams(Section):
    """One SFT source: a hub id (resolved through the mirror when set) or a local file."""

    source: str = Field(min_length=1)
    config: str = "default"
    split: str = "train"
    revision: str | None = None
    format: Literal["alpaca", "dolly", "dolly_hhrlhf", "gsm8k", "openmath"]
    limit: int | None = Field(default=None, gt=0)
    seed: int = 0

    @property
    def is_local(self) -> bool:
        return bool(re.search(r"\.(jsonl|json|parquet|csv)$", self.source))


class PrepareParams(Section):
    max_rejected_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    max_chars: int = Field(default=20_000, gt=0)


LAYER_METRICS = ("angular_last_token", "angular_mean_token", "block_influence", "kl_to_base")  # sdd/layer_scores.py


class LayerScoresParams(Section):
    """Block redundancy scores over calibration text (prepared rows rendered with the chat template)."""

    metric: str = "kl_to_base"
    token: Literal["last", "last_content"] = "last_content"
    datasets: list[str] = Field(default=["gsm8k", "alpaca"], min_length=1)
    samples: int = Field(default=32, gt=0)
    max_length: int = Field(default=384, gt=8)
    batch_size: int = Field(default=4, gt=0)
    seed: int = 0
    max_n: int = Field(default=8, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    kl_n_layers: list[int] = Field(default=[6], min_length=1)
    shortlist: int | None = Field(default=4, gt=0)
    shortlist_proxy: Literal["angular_last_token", "angular_mean_token", "block_influence"] = "angular_mean_token"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in LAYER_METRICS:
            raise ValueError(f"unknown metric {value!r}{did_you_mean(value, LAYER_METRICS)}; known: {list(LAYER_METRICS)}")
        return value

    @model_validator(mode="after")
    def _kl_sizes(self) -> LayerScoresParams:
        big = [n for n in self.kl_n_layers if n > self.max_n]
        if big:
            raise ValueError(f"kl_n_layers {big} exceed max_n={self.max_n}; raise max_n (the shortlist ranks blocks "
                             f"by a proxy table that stops at max_n) or drop them")
        return self


class PruneParams(Section):
    """Which block of consecutive decoder layers to remove."""

    n_layers: int = Field(default=6, gt=0)
    start: Literal["auto"] | int = "auto"
    flops_context: int = Field(default=0, ge=0)

    @field_validator("start")
    @classmethod
    def _start(cls, value):
        if isinstance(value, int) and value < 0:
            raise ValueError(f"start must be `auto` or a layer index >= 0, got {value}")
        return value


class EngineParams(Section):
    """How a vLLM `LLM` is built (sdd/generation.py `build_vllm`); the `hf` engine uses dtype and seed."""

    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    max_model_len: int = Field(default=1024, gt=0)
    gpu_memory_utilization: float = Field(default=0.15, gt=0.0, le=1.0)
    enforce_eager: bool = True
    tensor_parallel_size: int = Field(default=1, ge=1)
    seed: int = 0


class SamplingParams(Section):
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=320, gt=0)
    n: int = Field(default=1, ge=1)


DEFAULT_LEAK_PHRASES = ("reference answer", "reference response", "reference solution", "the reference",
                        "your response", "example response", "the example above", "the given solution",
                        "worked solution", "the provided solution")


class DistillParams(Section):
    """Self-data distillation: the base model rewrites the responses of these prepared datasets."""

    datasets: list[str] = ["gsm8k", "alpaca"]
    engine: Literal["vllm", "hf"] = "vllm"
    engine_args: EngineParams = EngineParams()
    sampling: SamplingParams = SamplingParams()
    hf_batch_size: int = Field(default=16, gt=0)
    chunk_size: int = Field(default=256, gt=0)
    leak_phrases: list[str] = list(DEFAULT_LEAK_PHRASES)
    min_length_ratio: float = Field(default=0.3, ge=0.0)


class MergeRecipe(Section):
    """One merge: models (dirs under `paths.models`), a mergekit method and its params."""

    models: list[str] = Field(min_length=2)
    method: str = "slerp"
    base: str | None = None
    params: dict[str, float | bool | list[float]] = {}

    @model_validator(mode="after")
    def _recipe(self) -> MergeRecipe:
        from sdd.merging import check_recipe

        check_recipe(self.method, self.models, self.base, self.params)
        outside = [m for m in [*self.models, self.base] if m and m.split("/")[0] not in MERGE_INPUT_ROOTS]
        if outside:
            raise ValueError(f"{outside} are not under {list(MERGE_INPUT_ROOTS)} (dirs under paths.models); "
                             f"dvc.yaml tracks only those as merge inputs, so a change elsewhere would not rerun the merge")
        return self

    def resolved_params(self) -> dict:
        from sdd.merging import check_recipe

        return check_recipe(self.method, self.models, self.base, self.params)


# The model folders (under paths.models) that dvc.yaml declares as deps of merge@<recipe>.
MERGE_INPUT_ROOTS = ("finetuned", "pruned")


class MergeParams(Section):
    """Merges of fine-tuned models, one merge@<name> stage per recipe; output models/merged/<name>."""

    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    recipes: dict[str, MergeRecipe] = {}

    @field_validator("recipes")
    @classmethod
    def _recipe_names(cls, value: dict[str, MergeRecipe]) -> dict[str, MergeRecipe]:
        check_names("recipe", value)
        return value


ARM_KINDS = ("original", "distilled")


class LoraParams(Section):
    rank: int = Field(default=16, gt=0)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                      min_length=1)


class FinetuneParams(Section):
    """Recovery fine-tuning, one finetune@<arm> stage per arm. An arm names only its data
    (dataset -> `original` prepared response or `distilled` selected response); every training
    setting below is shared by all arms, so the arms differ in their data and nothing else."""

    arms: dict[str, dict[str, Literal["original", "distilled"]]] = {
        "sft": {"gsm8k": "original", "alpaca": "original"},
        "sdd": {"gsm8k": "distilled", "alpaca": "distilled"},
    }
    method: Literal["lora", "full"] = "lora"
    lora: LoraParams = LoraParams()
    max_seq_len: int = Field(default=512, gt=8)
    overlong: Literal["truncate", "drop"] = "truncate"
    batching: Literal["padding_free", "padded"] = "padding_free"
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=8, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 0
    eval_steps: int = Field(default=5, gt=0)
    save_steps: int = Field(default=5, gt=0)
    num_processes: int = Field(default=1, ge=1)
    save_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        check_names("arm", value)
        empty = [name for name, data in value.items() if not data]
        if empty:
            raise ValueError(f"arms {empty} name no dataset; give each arm at least one `<dataset>: original|distilled`")
        return value

    def training_settings(self) -> dict:
        """Everything an arm trains with except its data: identical for every arm by construction."""
        return self.model_dump(exclude={"arms"})


EVAL_TASKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande", "gsm8k")


class EvalTaskParams(Section):
    """One leaderboard task: few-shot examples, items per lm-eval task (MMLU: per subject), subjects."""

    shots: int = Field(ge=0)
    limit: int | None = Field(default=None, gt=0)
    subjects: list[str] | None = None  # MMLU only: null = all 57


class VllmEvalParams(Section):
    gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0)
    max_model_len: int = Field(default=4096, gt=0)
    enforce_eager: bool = True


class FidelityParams(Section):
    """Held-out prompts on which each model is compared with the reference (base) model."""

    reference: str = "base"  # model directory under paths.models
    prompts: dict[str, DatasetParams] = {
        "gsm8k_test": DatasetParams(source="openai/gsm8k", config="main", split="test", revision="main",
                                    format="gsm8k", limit=16, seed=0),
        "dolly_hhrlhf": DatasetParams(source="mosaicml/dolly_hhrlhf", config="default", split="train",
                                      revision="main", format="dolly_hhrlhf", limit=16, seed=0),
    }
    max_new_tokens: int = Field(default=48, gt=0)
    batch_size: int = Field(default=8, gt=0)


def _default_eval_tasks() -> dict[str, EvalTaskParams]:
    return {"arc_challenge": EvalTaskParams(shots=25, limit=8), "hellaswag": EvalTaskParams(shots=10, limit=8),
            "mmlu": EvalTaskParams(shots=5, limit=1, subjects=None), "truthfulqa_mc2": EvalTaskParams(shots=0, limit=16),
            "winogrande": EvalTaskParams(shots=5, limit=24), "gsm8k": EvalTaskParams(shots=5, limit=3)}


class EvaluateParams(Section):
    """lm-eval settings shared by every evaluate@<model> stage, the models, and fidelity."""

    models: dict[str, str] = {"base": "base", "pruned": "pruned", "sft": "finetuned/sft", "sdd": "finetuned/sdd"}
    tasks: dict[str, EvalTaskParams] = Field(default_factory=_default_eval_tasks)
    backend: Literal["hf", "vllm"] = "hf"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    batch_size: int = Field(default=2, gt=0)
    chat_template: bool = False
    seed: int = 0
    vllm: VllmEvalParams = VllmEvalParams()
    fidelity: FidelityParams = FidelityParams()

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: dict[str, EvalTaskParams]) -> dict[str, EvalTaskParams]:
        unknown = [t for t in value if t not in EVAL_TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}{did_you_mean(unknown[0], EVAL_TASKS)}; choose from {list(EVAL_TASKS)}")
        if not value:
            raise ValueError(f"at least one task is needed; choose from {list(EVAL_TASKS)}")
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, str]) -> dict[str, str]:
        check_names("model", value)
        return value

    def model(self, name: str) -> str:
        if name not in self.models:
            raise ValueError(f"unknown model {name!r}{did_you_mean(name, self.models)}; "
                             f"evaluate.models lists {sorted(self.models)}")
        return self.models[name]


class ReportParams(Section):
    """The recovery table: which model is the baseline, which pairs get a paired bootstrap CI."""

    baseline: str = "base"
    compare: list[tuple[str, str]] = [("sdd", "sft")]  # (a, b): CI of average(a) - average(b)
    bootstrap: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = 0


class SpeculatePrompts(Section):
    """Held-out prompts: rows of prepared datasets that finetune's validation split kept out of training."""

    datasets: list[str] = Field(default=["gsm8k", "alpaca"], min_length=1)
    per_dataset: int = Field(default=4, gt=0)
    max_tokens: int = Field(default=64, gt=0)


class SpeculateParams(Section):
    """Speculative decoding with the base model as target, one speculate@<draft> stage per draft."""

    target: str = "base"
    drafts: dict[str, str] = {"pruned": "pruned", "sft": "finetuned/sft", "sdd": "finetuned/sdd"}
    num_speculative_tokens: int = Field(default=4, ge=1, le=16)
    temperature: float = Field(default=0.0, ge=0.0)
    prompts: SpeculatePrompts = SpeculatePrompts()
    engine_args: EngineParams = EngineParams(max_model_len=1024)

    @field_validator("drafts")
    @classmethod
    def _draft_names(cls, value: dict[str, str]) -> dict[str, str]:
        check_names("draft", value)
        return value


class Params(Section):
    paths: Paths = Paths()
    data_mirror: str | None = None
    base_model: BaseModelParams = BaseModelParams()
    datasets: dict[str, DatasetParams]
    prepare: PrepareParams = PrepareParams()
    layer_scores: LayerScoresParams = LayerScoresParams()
    prune: PruneParams = PruneParams()
    distill: DistillParams = DistillParams()
    merge: MergeParams = MergeParams()
    speculate: SpeculateParams = SpeculateParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, value: dict[str, DatasetParams]) -> dict[str, DatasetParams]:
        if not value:
            raise ValueError("at least one dataset is needed")
        check_names("dataset", value)
        return value

    @model_validator(mode="after")
    def _cross_section(self) -> Params:
        self._check_distill()
        self._check_arms()
        self._check_report()
        self._check_pruning()
        self._check_merge_and_speculate()
        return self

    def _check_distill(self) -> None:
        """Every dataset to distill is a prepared dataset."""
        unknown = [name for name in self.distill.datasets if name not in self.datasets]
        if unknown:
            hints = "".join(did_you_mean(n, self.datasets) for n in unknown)
            raise ValueError(f"distill.datasets lists {unknown}, which are not under `datasets`{hints}; "
                             f"known: {sorted(self.datasets)}")

    def _check_merge_and_speculate(self) -> None:
        """Merge inputs and drafts name models some stage writes; prompts come from known datasets."""
        producers = {"finetuned": self.finetune.arms, "merged": self.merge.recipes}

        def check(key: str, model: str) -> None:
            root, _, name = model.partition("/")
            if root in producers and name not in producers[root]:
                owner = "finetune.arms" if root == "finetuned" else "merge.recipes"
                raise ValueError(f"{key} names {model!r}, but {owner} has no {name!r}{did_you_mean(name, producers[root])}; "
                                 f"known: {sorted(producers[root])}")

        for recipe_name, recipe in self.merge.recipes.items():
            for model in [*recipe.models, *([recipe.base] if recipe.base else [])]:
                check(f"merge.recipes.{recipe_name}", model)
        for draft, model in self.speculate.drafts.items():
            check(f"speculate.drafts.{draft}", model)
        unknown = [name for name in self.speculate.prompts.datasets if name not in self.datasets]
        if unknown:
            hints = "".join(did_you_mean(n, self.datasets) for n in unknown)
            raise ValueError(f"speculate.prompts.datasets lists {unknown}, which are not under `datasets`{hints}; "
                             f"known: {sorted(self.datasets)}")

    def _check_pruning(self) -> None:
        """Calibration datasets exist; `prune.start: auto` needs a score for prune.n_layers."""
        scores = self.layer_scores
        unknown = [name for name in scores.datasets if name not in self.datasets]
        if unknown:
            hints = "".join(did_you_mean(n, self.datasets) for n in unknown)
            raise ValueError(f"layer_scores.datasets lists {unknown}, which are not under `datasets`{hints}; "
                             f"known: {sorted(self.datasets)}")
        n = self.prune.n_layers
        if self.prune.start == "auto" and n > scores.max_n:
            raise ValueError(f"prune.n_layers={n} with prune.start=auto needs scores for {n}-layer blocks; "
                             f"raise layer_scores.max_n (now {scores.max_n}) to at least {n}")
        if self.prune.start == "auto" and scores.metric == "kl_to_base" and n not in scores.kl_n_layers:
            raise ValueError(f"prune.n_layers={n} with layer_scores.metric=kl_to_base needs KL for {n}-layer blocks; "
                             f"add {n} to layer_scores.kl_n_layers (now {scores.kl_n_layers}) or choose another metric")

    def _check_report(self) -> None:
        """report.baseline and report.compare must name models that evaluate.models lists."""
        models = self.evaluate.models
        named = [("report.baseline", self.report.baseline)] + [
            (f"report.compare[{i}]", name) for i, pair in enumerate(self.report.compare) for name in pair]
        problems = [f"{key}={name!r} is not in evaluate.models{did_you_mean(name, models)}"
                    for key, name in named if name not in models]
        if problems:
            raise ValueError("; ".join(problems) + f"; evaluate.models lists {sorted(models)}")
        for task, cfg in self.evaluate.tasks.items():
            if cfg.subjects is not None and task != "mmlu":
                raise ValueError(f"evaluate.tasks.{task}.subjects: only mmlu has subjects; remove the key")

    def _check_arms(self) -> None:
        distilled = getattr(getattr(self, "distill", None), "datasets", None)  # None until a distill section exists
        problems = []
        for arm, data in self.finetune.arms.items():
            for ds, kind in data.items():
                if ds not in self.datasets:
                    problems.append(f"finetune.arms.{arm}.{ds}: unknown dataset{did_you_mean(ds, self.datasets)}; "
                                    f"known: {sorted(self.datasets)}")
                elif kind == "distilled" and distilled is not None and ds not in distilled:
                    problems.append(f"finetune.arms.{arm}.{ds}: kind 'distilled' but {ds!r} is not in distill.datasets "
                                    f"{list(distilled)}; add it there or use kind 'original'")
        if problems:
            raise ValueError("; ".join(problems))

    def mirror(self) -> Path | None:
        """The dataset mirror: the `SDD_DATA_MIRROR` environment variable wins over params."""
        value = os.environ.get(MIRROR_ENV) or self.data_mirror
        if not value:
            return None
        path = Path(value).expanduser()
        if not path.is_dir():
            origin = f"environment variable {MIRROR_ENV}" if os.environ.get(MIRROR_ENV) else f"{PARAMS_FILE}: data_mirror"
            raise ValueError(
                f"{origin} points to {value!r}, which is not a directory; "
                f"set it to a folder laid out as <owner>/<name>/<config>/<split>.jsonl, or unset it to use the hub"
            )
        return path

    def dataset(self, name: str) -> DatasetParams:
        if name not in self.datasets:
            raise ValueError(f"unknown dataset {name!r}{did_you_mean(name, self.datasets)}; known: {sorted(self.datasets)}")
        return self.datasets[name]


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} invalid value(s); fix these keys:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            parent_model = _model_at(e["loc"][:-1])
            hint = did_you_mean(str(e["loc"][-1]), parent_model.model_fields) if parent_model else ""
            allowed = f"; allowed keys: {sorted(parent_model.model_fields)}" if parent_model else ""
            lines.append(f"  - {key}: unknown key{hint}{allowed}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def _model_at(loc) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (to list its allowed keys), if any."""
    model, parts = Params, list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:  # a map of named entries: skip the name
            if not parts:
                return None
            parts.pop(0)
            annotation = typing.get_args(annotation)[1]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def load_params(path: str | os.PathLike = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run stages from the repository root (where params.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ValueError(_format_errors(path, err)) from None
