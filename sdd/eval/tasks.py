"""The OpenLLM Leaderboard v1 tasks: lm-eval's own registered task configs, with only what this
project changes overridden (where the rows come from, the shots, the split few-shot examples come
from where the mirror lacks the standard one, the generation length).

    from sdd.eval.tasks import TASKS, task_configs, build
    configs = task_configs("arc_challenge", shots=25, mirror=Path("data/mirror"))
    tasks = build(configs)                      # {"arc_challenge": lm-eval Task}

Prompts, choices, targets, metrics and filters are lm-eval's (pinned in pyproject.toml; the prompt
tests in tests/test_eval_tasks.py catch a drift). With a mirror, `dataset_path: json` reads the
mirror's hub-layout JSONL files; without one, the hub dataset the standard task names. Where the
mirror lacks the standard few-shot split (ARC and HellaSwag have no train), the split that is present
is used and recorded; when the few-shot split is the evaluated split (HellaSwag) lm-eval keeps each
document out of its own few-shot examples. MMLU is one lm-eval task per subject; the mirror holds
every subject in one file (config `all`), so each subject's task filters it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sdd.cache import file_digest
from sdd.errors import InputError, MissingInput


def _choices(field: str) -> Callable[[dict], float]:
    return lambda doc: 1.0 / len(doc[field] if field != "choices.text" else doc["choices"]["text"])


def _mc2_chance(doc: dict) -> float:
    """Uniform probabilities put on the true answers the share of them."""
    labels = doc["mc2_targets"]["labels"]
    return sum(labels) / len(labels)


@dataclass(frozen=True)
class TaskSpec:
    """One leaderboard task: its lm-eval name, where its rows live, how it is scored and reported."""

    lm_eval: str  # the registered lm-eval task (MMLU: its per-subject tasks mmlu_<subject>)
    title: str  # column title in reports
    hub: str  # hub id; also the mirror folder <owner>/<name>
    config: str  # hub config; the mirror sub-folder
    eval_split: str
    fewshot_split: str | None  # the standard few-shot split (None: a 0-shot task)
    metric: str  # the leaderboard metric
    chance: Callable[[dict], float]  # expected score of uniform guessing on one document
    filter: str = "none"  # lm-eval filter whose metric is the score (gsm8k: strict-match)
    mirror_fewshot_split: str | None = None  # where the mirror lacks the standard split
    margin: bool = True  # one right choice among several: the choice margin is defined
    generation: bool = False  # generated answers (max_new_tokens applies)


TASKS: dict[str, TaskSpec] = {
    "arc_challenge": TaskSpec("arc_challenge", "ARC-C", "allenai/ai2_arc", "ARC-Challenge", "test", "train",
                              "acc_norm", _choices("choices.text"), mirror_fewshot_split="validation"),
    "hellaswag": TaskSpec("hellaswag", "HellaSwag", "Rowan/hellaswag", "default", "validation", "train",
                          "acc_norm", _choices("endings"), mirror_fewshot_split="validation"),
    "mmlu": TaskSpec("mmlu", "MMLU", "cais/mmlu", "all", "test", "dev", "acc", _choices("choices")),
    "truthfulqa_mc2": TaskSpec("truthfulqa_mc2", "TruthfulQA-MC2", "truthfulqa/truthful_qa", "multiple_choice",
                               "validation", None, "acc", _mc2_chance, margin=False),
    "winogrande": TaskSpec("winogrande", "WinoGrande", "allenai/winogrande", "winogrande_xl", "validation",
                           "train", "acc", lambda doc: 0.5),
    "gsm8k": TaskSpec("gsm8k", "GSM8k", "openai/gsm8k", "main", "test", "train", "exact_match",
                      lambda doc: 0.0, filter="strict-match", margin=False, generation=True),
}  # fmt: skip
TITLES = {name: spec.title for name, spec in TASKS.items()}

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies "
    "sociology us_foreign_policy virology world_religions"
).split()


def mirror_file(mirror: Path, spec: TaskSpec, split: str) -> Path:
    return mirror / spec.hub / spec.config / f"{split}.jsonl"


def splits(spec: TaskSpec, mirror: Path | None) -> tuple[str, str | None]:
    """(evaluated split, few-shot split) for this data source."""
    if mirror is None or spec.fewshot_split is None:
        return spec.eval_split, spec.fewshot_split
    if mirror_file(mirror, spec, spec.fewshot_split).is_file():
        return spec.eval_split, spec.fewshot_split
    return spec.eval_split, spec.mirror_fewshot_split or spec.fewshot_split  # no fallback: the missing file is reported


def task_names(task: str, subjects: list[str] | None = None) -> list[str]:
    """The lm-eval task names one leaderboard task expands to (MMLU: one per subject)."""
    if task == "mmlu":
        return [f"mmlu_{s}" for s in (subjects or MMLU_SUBJECTS)]
    return [TASKS[task].lm_eval]


@functools.cache
def manager() -> Any:
    """lm-eval's task index over the six tasks' folders only (1 s; every bundled task: 12 s)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    root = Path(lm_eval.__file__).parent / "tasks"
    folders = ("arc", "hellaswag", "mmlu/default", "truthfulqa", "winogrande", "gsm8k")
    return TaskManager(include_path=[str(root / f) for f in folders], include_defaults=False)


def mmlu_subject_docs(dataset: Any, subject: str) -> Any:
    return dataset.filter(lambda d: d["subject"] == subject)


def task_configs(
    task: str, shots: int, mirror: Path | None, subjects: list[str] | None = None, max_new_tokens: int | None = None
) -> list[dict]:
    """lm-eval's registered config of each lm-eval task of one leaderboard task, with the overrides."""
    spec = TASKS[task]
    eval_split, fewshot_split = splits(spec, mirror)
    if shots > 0 and fewshot_split is None:
        raise InputError(
            f"evaluate.tasks.{task}.shots={shots} but {task} has no split to draw few-shot examples from; use shots: 0"
        )
    unknown = sorted(set(subjects or ()) - set(MMLU_SUBJECTS)) if task == "mmlu" else []
    if unknown:
        raise InputError(f"evaluate.tasks.mmlu.subjects: unknown subject(s) {unknown}; choose from {MMLU_SUBJECTS}")
    overrides: dict[str, Any] = {"num_fewshot": shots, "test_split": eval_split, "fewshot_split": fewshot_split}
    overrides["fewshot_config"] = {"split": fewshot_split}  # lm-eval would prefer `training_split` for few-shot
    if task == "mmlu":
        overrides["fewshot_config"]["sampler"] = "first_n"
    if max_new_tokens is not None:
        overrides["generation_kwargs"] = {"max_gen_toks": max_new_tokens}
    if mirror is not None:
        files = {s: str(mirror_file(mirror, spec, s)) for s in {eval_split, fewshot_split} if s}
        missing = [f for f in files.values() if not Path(f).is_file()]
        if missing:
            raise MissingInput(
                f"task {task}: the mirror has no {missing[0]}; the mirror must hold "
                f"{spec.hub}/{spec.config}/<split>.jsonl for splits {sorted(files)}"
            )
        split_keys = {"training_split": None, "validation_split": None}
        overrides |= {
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": files},
            **split_keys,
        }
    configs = []
    for name in task_names(task, subjects):
        cfg = registered(name)
        extra = dict(overrides)
        if "generation_kwargs" in extra:
            extra["generation_kwargs"] = {**cfg.get("generation_kwargs", {}), **extra["generation_kwargs"]}
        if task == "mmlu" and mirror is not None:  # the mirror's one file holds every subject
            extra["process_docs"] = partial(mmlu_subject_docs, subject=name.removeprefix("mmlu_"))
        configs.append({**cfg, **extra})
    return configs


def registered(name: str) -> dict:
    """lm-eval's registered config of task `name` (its YAML with the included template, functions resolved)."""
    index = manager()._index  # noqa: SLF001 (lm-eval exposes no public "config of a task" before it loads data)
    if name not in index:
        raise InputError(
            f"lm-eval {lm_eval_version()} has no task {name!r}; this project pins the version it was built on"
        )
    return manager()._factory._load_full_config(index[name], None)  # noqa: SLF001


def build(configs: list[dict]) -> dict[str, Any]:
    """lm-eval Task objects (the rows are read here) for the given configs, by task name."""
    from lm_eval.api.task import ConfigurableTask

    return {cfg["task"]: ConfigurableTask(config=cfg) for cfg in configs}


def lm_eval_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("lm_eval")


def input_fingerprint(task: str, mirror: Path | None) -> dict:
    """What identifies a task's data: the sha256 of each mirror file lm-eval reads for it (eval and
    few-shot splits), or without a mirror the hub commit of its dataset."""
    spec = TASKS[task]
    if mirror is None:
        from sdd.hub import hub_commit  # hub access only without a mirror

        return {"kind": "hub", "repo": spec.hub, "sha": hub_commit("dataset", spec.hub, None, f"evaluate.tasks.{task}")}
    files = sorted({mirror_file(mirror, spec, s) for s in splits(spec, mirror) if s})
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise MissingInput(f"task {task}: the mirror has no {missing[0]}")
    return {"kind": "file", "files": {f.relative_to(mirror).as_posix(): file_digest([f]) for f in files}}
