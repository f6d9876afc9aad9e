"""The whole `params.yaml`: every section, the checks across sections, and the loader.

from sdd.config import load_params
params = load_params()            # validates every section, reports all problems at once
params.prepare.max_rejected_fraction
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError, field_validator, model_validator

from sdd.config.base import Section
from sdd.config.base_model import BaseModelParams
from sdd.config.datasets import DatasetParams, PrepareParams
from sdd.config.distill import DistillParams
from sdd.config.evaluate import EvaluateParams
from sdd.config.finetune import FinetuneParams
from sdd.config.launch import LaunchParams
from sdd.config.layer_scores import LayerScoresParams, PruneParams
from sdd.config.merge import MergeParams
from sdd.config.paths import Paths
from sdd.config.report import ReportParams
from sdd.config.speculate import SpeculateParams
from sdd.config.teacher import TeacherLogitsParams
from sdd.config.trace import traced
from sdd.errors import InputError, MissingInput, check_names, did_you_mean, format_validation_errors

MIRROR_ENV = "SDD_DATA_MIRROR"
PARAMS_FILE = "params.yaml"


def _unknown(key: str, names: list[str], known: dict | list, where: str = "under `datasets`") -> str | None:
    missing = [n for n in names if n not in known]
    if not missing:
        return None
    hints = "".join(did_you_mean(n, known) for n in missing)
    return f"{key} lists {missing}, which are not {where}{hints}; known: {sorted(known)}"


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
    teacher_logits: TeacherLogitsParams = TeacherLogitsParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    launch: LaunchParams = LaunchParams()

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, value: dict[str, DatasetParams]) -> dict[str, DatasetParams]:
        if not value:
            raise ValueError("at least one dataset is needed")
        check_names("dataset", value)
        return value

    @model_validator(mode="after")
    def _cross_section(self) -> Params:
        problems = [
            p
            for p in (
                _unknown("distill.datasets", self.distill.datasets, self.datasets),
                _unknown("layer_scores.datasets", self.layer_scores.datasets, self.datasets),
                _unknown("speculate.prompts.datasets", self.speculate.prompts.datasets, self.datasets),
                _unknown("teacher_logits.original", self.teacher_logits.original, self.datasets),
                _unknown(
                    "teacher_logits.distilled",
                    self.teacher_logits.distilled,
                    self.distill.datasets,
                    "in distill.datasets",
                ),
                self._check_arms(),
                self._check_names(),
                self._check_report(),
                self._check_pruning(),
                self._check_models(),
            )
            if p
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _check_arms(self) -> str | None:
        problems = []
        for arm, spec in self.finetune.arms.items():
            for ds, kind in spec.data.items():
                if ds not in self.datasets:
                    problems.append(
                        f"finetune.arms.{arm}.data.{ds}: unknown dataset{did_you_mean(ds, self.datasets)}; "
                        f"known: {sorted(self.datasets)}"
                    )
                elif kind == "distilled" and ds not in self.distill.datasets:
                    problems.append(
                        f"finetune.arms.{arm}.data.{ds}: kind 'distilled' but {ds!r} is not in distill.datasets "
                        f"{list(self.distill.datasets)}; add it there or use kind 'original'"
                    )
                if spec.objective == "kd":
                    for need in {kind, "original"}:  # distilled arms also validate on the original's logits
                        if ds not in getattr(self.teacher_logits, need):
                            problems.append(
                                f"finetune.arms.{arm} (objective kd) needs teacher logits of {ds}'s {need} "
                                f"responses: add {ds!r} to teacher_logits.{need}"
                            )
        return "; ".join(problems) or None

    def _check_report(self) -> str | None:
        """Every name the report, the controls and the skip lists use is a model the pipeline has."""
        from sdd.config.models import model_dirs

        models = model_dirs(self)
        named = [("report.baseline", self.report.baseline), ("report.start", self.report.start)]
        named += [(f"report.compare[{i}]", name) for i, pair in enumerate(self.report.compare) for name in pair]
        named += [(f"finetune.arms.{a}.control", s.control) for a, s in self.finetune.arms.items() if s.control]
        named += [(f"merge.recipes.{r}.control", s.control) for r, s in self.merge.recipes.items() if s.control]
        named += [("evaluate.skip", n) for n in self.evaluate.skip]
        named += [("speculate.skip", n) for n in self.speculate.skip if n not in self.speculate.drafts]
        problems = [
            f"{key}={name!r} is not a model of this pipeline{did_you_mean(name, models)}"
            for key, name in named
            if name not in models
        ]
        if problems:
            return "; ".join(problems) + f" (models: evaluate.models, finetune.arms, merge.recipes: {sorted(models)})"
        skipped = [(k, n) for k, n in named[:2] if n in self.evaluate.skip]
        return "; ".join(f"{k}={n!r} is in evaluate.skip; the report needs it evaluated" for k, n in skipped) or None

    def _check_names(self) -> str | None:
        """One name, one model: an arm, a recipe and an extra model or draft never share a name."""
        seen: dict[str, str] = {}
        owners: list[tuple[str, dict]] = [
            ("evaluate.models", self.evaluate.models),
            ("speculate.drafts", self.speculate.drafts),
            ("finetune.arms", self.finetune.arms),
            ("merge.recipes", self.merge.recipes),
        ]
        for owner, names in owners:
            for name in names:
                if name in seen and {seen[name], owner} != {"evaluate.models", "speculate.drafts"}:
                    return f"{name!r} is in both {seen[name]} and {owner}; a model name must be unique"
                seen.setdefault(name, owner)
        clash = [n for n, d in self.speculate.drafts.items() if self.evaluate.models.get(n, d) != d]
        if clash:
            return f"speculate.drafts and evaluate.models give {clash} different directories; use one name per model"
        return None

    def _check_pruning(self) -> str | None:
        """`prune.start: auto` needs a score for prune.n_layers."""
        scores, n = self.layer_scores, self.prune.n_layers
        if self.prune.start == "auto" and n > scores.max_n:
            return (
                f"prune.n_layers={n} with prune.start=auto needs scores for {n}-layer blocks; "
                f"raise layer_scores.max_n (now {scores.max_n}) to at least {n}"
            )
        if self.prune.start == "auto" and scores.metric == "kl_to_base" and n not in scores.kl_n_layers:
            return (
                f"prune.n_layers={n} with layer_scores.metric=kl_to_base needs KL for {n}-layer blocks; "
                f"add {n} to layer_scores.kl_n_layers (now {scores.kl_n_layers}) or choose another metric"
            )
        return None

    def _check_models(self) -> str | None:
        """Merge inputs and drafts name models some stage writes."""
        producers: dict[str, tuple[str, dict]] = {
            "finetuned": ("finetune.arms", self.finetune.arms),
            "merged": ("merge.recipes", self.merge.recipes),
        }
        named = [(f"merge.recipes.{r}", m) for r, recipe in self.merge.recipes.items() for m in recipe.inputs()]
        for key, model in named:
            if model not in ("base", "pruned") and model.partition("/")[0] not in producers:
                return (
                    f"{key} names {model!r}: a merge input is base, pruned, finetuned/<arm> or "
                    "merged/<recipe> (a folder under paths.models that a stage writes)"
                )
        if cycle := _merge_cycle({r: recipe.inputs() for r, recipe in self.merge.recipes.items()}):
            return f"merge.recipes: {' -> '.join(cycle)} is a cycle; a merge cannot read its own output"
        named += [(f"speculate.drafts.{d}", m) for d, m in self.speculate.drafts.items()]
        named += [(f"evaluate.models.{d}", m) for d, m in self.evaluate.models.items()]
        for key, model in named:
            root, _, name = model.partition("/")
            if root in producers and name not in producers[root][1]:
                owner, known = producers[root]
                return (
                    f"{key} names {model!r}, but {owner} has no {name!r}{did_you_mean(name, known)}; "
                    f"known: {sorted(known)}"
                )
        return None

    def mirror(self) -> Path | None:
        """The dataset mirror: `SDD_DATA_MIRROR`, else `data_mirror`, else the folder `paths.mirror`
        when it exists (a link `make` creates to a mirror it finds), else None (the hub)."""
        value = os.environ.get(MIRROR_ENV) or self.data_mirror
        if MIRROR_ENV in os.environ and not value:  # set but empty: no mirror, whatever is linked
            return None
        if not value:
            linked = Path(self.paths.mirror)
            return linked.resolve() if linked.is_dir() else None
        path = Path(value).expanduser()
        if not path.is_dir():
            origin = (
                f"environment variable {MIRROR_ENV}" if os.environ.get(MIRROR_ENV) else f"{PARAMS_FILE}: data_mirror"
            )
            raise InputError(
                f"{origin} points to {value!r}, which is not a directory; "
                f"set it to a folder laid out as <owner>/<name>/<config>/<split>.jsonl, or unset it to use the hub"
            )
        return path

    def dataset(self, name: str) -> DatasetParams:
        if name not in self.datasets:
            raise InputError(
                f"unknown dataset {name!r}{did_you_mean(name, self.datasets)}; known: {sorted(self.datasets)}"
            )
        return self.datasets[name]


def load_params(path: str | os.PathLike = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path} not found; run stages from the repository root (where params.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise InputError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    try:
        return traced(Params.model_validate(raw))
    except ValidationError as err:
        raise InputError(format_validation_errors(path, err, Params)) from None


def _merge_cycle(inputs: dict[str, list[str]]) -> list[str] | None:
    """A chain of recipes that reads its own output (merged/a -> merged/b -> merged/a), or None."""

    def walk(recipe: str, path: list[str]) -> list[str] | None:
        if recipe in path:
            return [*path[path.index(recipe) :], recipe]
        for model in inputs.get(recipe, []):
            root, _, name = model.partition("/")
            if root == "merged" and (found := walk(name, [*path, recipe])):
                return found
        return None

    return next((found for recipe in inputs if (found := walk(recipe, []))), None)
