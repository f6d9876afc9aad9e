"""The OpenLLM Leaderboard v1 tasks as lm-eval task configs this project owns.

    from sdd.eval.tasks import task_configs
    configs = task_configs("arc_challenge", shots=25, mirror=Path("../shared/datasets"))

Each config is the dict lm-eval's own YAML would give (same prompt, choices, target, metrics;
lm-eval 0.4.x `tasks/{arc,hellaswag,mmlu,truthfulqa,winogrande,gsm8k}`), with two changes:
- data: with a mirror, `dataset_path: json` + `data_files` pointing at the mirror's hub-layout
  JSONL files; without one, the hub dataset the standard task uses.
- few-shot source: where the mirror lacks the split the standard task draws few-shot examples
  from (ARC has no train split), the split that is present is used and recorded (`fewshot_split`).
  When the few-shot split is the evaluated split (HellaSwag) it is declared as both, so lm-eval
  keeps each document out of its own few-shot examples.
MMLU is one lm-eval task per subject (`sdd_mmlu_<subject>`, few-shot from that subject's dev
rows, first 5); the caller averages over subjects. Pure: builds dicts, reads nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from sdd.cache import file_digest
from sdd.errors import InputError, MissingInput

PREFIX = "sdd_"


@dataclass(frozen=True)
class TaskSpec:
    """One leaderboard task: where its rows live, which splits play which role, how it is scored."""

    hub: str  # hub id; also the mirror folder <owner>/<name>
    config: str  # hub config; the mirror sub-folder
    eval_split: str
    fewshot_split: str | None  # standard few-shot split (None: 0-shot task)
    metric: str  # the leaderboard metric
    filter: str = "none"  # lm-eval filter whose metric is the score (gsm8k: strict-match)
    mirror_fewshot_split: str | None = None  # where the mirror lacks the standard split
    extra: dict = field(default_factory=dict)  # the rest of the lm-eval config


# --- document functions (copies of lm-eval's, cited, so the prompt is pinned to this file) ---


def _hellaswag_preprocess(text: str) -> str:
    """lm_eval/tasks/hellaswag/utils.py `preprocess` (WikiHow bracket artefacts removed)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(doc: dict) -> dict:
    """lm_eval/tasks/hellaswag/utils.py `_process_doc`: query = label + ctx_a + Capitalised ctx_b.

    The mirror's rows have `ctx_b` empty (ctx_a holds the whole context), so the capitalisation of
    ctx_b's first word has nothing to act on: an approximation of the hub rows, recorded as such.
    """
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": _hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [_hellaswag_preprocess(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


def hellaswag_docs(dataset):
    return dataset.map(hellaswag_doc)


def winogrande_text(doc: dict) -> int:
    """lm_eval/tasks/winogrande/preprocess_winogrande.py: the 'text' is the gold option index
    (multiple-input task: each choice is a different context, the target is the shared ending)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_target(doc: dict) -> str:
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def winogrande_choice(doc: dict) -> list[str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def truthfulqa_text(doc: dict) -> str:
    """lm_eval/tasks/truthfulqa/truthfulqa_mc1.yaml: six fixed QA pairs, then the question."""
    return TRUTHFULQA_PROMPT + "\n\nQ: " + doc["question"] + "\nA:"


def truthfulqa_mc2(doc: dict, results) -> dict:
    """lm_eval/tasks/truthfulqa/utils.py `process_results_mc2`: normalised probability mass on the
    true answers (Lin et al. 2022, MC2)."""
    ll = np.array([r[0] for r in results])
    probs = np.exp(ll)
    probs = probs / probs.sum()
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(probs[labels == 1].sum())}


def mmlu_subject_docs(dataset, subject: str):
    return dataset.filter(lambda d: d["subject"] == subject)


TRUTHFULQA_PROMPT = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)

_MC = {"output_type": "multiple_choice"}
_ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
_ACC_NORM = _ACC + [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]

TASKS: dict[str, TaskSpec] = {
    "arc_challenge": TaskSpec(
        "allenai/ai2_arc",
        "ARC-Challenge",
        "test",
        "train",
        "acc_norm",
        mirror_fewshot_split="validation",
        extra={
            **_MC,
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{choices.label.index(answerKey)}}",
            "doc_to_choice": "{{choices.text}}",
            "metric_list": _ACC_NORM,
        },
    ),
    "hellaswag": TaskSpec(
        "Rowan/hellaswag",
        "default",
        "validation",
        "train",
        "acc_norm",
        mirror_fewshot_split="validation",
        extra={
            **_MC,
            "process_docs": hellaswag_docs,
            "doc_to_text": "{{query}}",
            "doc_to_target": "{{label}}",
            "doc_to_choice": "choices",
            "metric_list": _ACC_NORM,
        },
    ),
    "mmlu": TaskSpec(
        "cais/mmlu",
        "all",
        "test",
        "dev",
        "acc",
        extra={
            **_MC,
            "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
            "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "answer",
            "fewshot_config": {"sampler": "first_n"},
            "metric_list": _ACC,
        },
    ),
    "truthfulqa_mc2": TaskSpec(
        "truthfulqa/truthful_qa",
        "multiple_choice",
        "validation",
        None,
        "acc",
        extra={
            **_MC,
            "doc_to_text": truthfulqa_text,
            "doc_to_target": 0,
            "doc_to_choice": "{{mc2_targets.choices}}",
            "process_results": truthfulqa_mc2,
            "metric_list": _ACC,
        },
    ),
    "winogrande": TaskSpec(
        "allenai/winogrande",
        "winogrande_xl",
        "validation",
        "train",
        "acc",
        extra={
            **_MC,
            "doc_to_text": winogrande_text,
            "doc_to_target": winogrande_target,
            "doc_to_choice": winogrande_choice,
            "metric_list": _ACC,
        },
    ),
    "gsm8k": TaskSpec(
        "openai/gsm8k",
        "main",
        "test",
        "train",
        "exact_match",
        filter="strict-match",
        extra={
            "output_type": "generate_until",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{answer}}",
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "ignore_case": True,
                    "ignore_punctuation": False,
                    "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
                }
            ],
            "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False, "temperature": 0.0},
            "repeats": 1,
            "filter_list": [
                {
                    "name": "strict-match",
                    "filter": [
                        {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                        {"function": "take_first"},
                    ],
                },
                {
                    "name": "flexible-extract",
                    "filter": [
                        {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                        {"function": "take_first"},
                    ],
                },
            ],
        },
    ),
}

EVAL_TASK_TITLES = {
    "arc_challenge": "ARC-C",
    "hellaswag": "HellaSwag",
    "mmlu": "MMLU",
    "truthfulqa_mc2": "TruthfulQA-MC2",
    "winogrande": "WinoGrande",
    "gsm8k": "GSM8k",
}

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


def chance(task: str, doc: dict) -> float:
    """Expected score of uniform guessing on one document (for chance-normalised recovery).

    Multiple choice: 1 / number of choices; TruthfulQA-MC2: the share of true answers (uniform
    probabilities put that mass on them); GSM8k exact match: 0.
    """
    if task == "gsm8k":
        return 0.0
    if task == "truthfulqa_mc2":
        labels = doc["mc2_targets"]["labels"]
        return sum(labels) / len(labels)
    if task == "winogrande":
        return 0.5
    if task == "arc_challenge":
        return 1.0 / len(doc["choices"]["text"])
    if task == "hellaswag":
        return 1.0 / len(doc["endings"])
    return 1.0 / len(doc["choices"])


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
        return [f"{PREFIX}mmlu_{s}" for s in (subjects or MMLU_SUBJECTS)]
    return [f"{PREFIX}{task}"]


def task_configs(task: str, shots: int, mirror: Path | None, subjects: list[str] | None = None) -> list[dict]:
    """lm-eval config dicts for one leaderboard task (MMLU: one per subject)."""
    spec = TASKS[task]
    eval_split, fewshot_split = splits(spec, mirror)
    if shots > 0 and fewshot_split is None:
        raise InputError(
            f"evaluate.tasks.{task}.shots={shots} but {task} has no split to draw few-shot examples from; use shots: 0"
        )
    base = {**spec.extra, "num_fewshot": shots, "test_split": eval_split, "fewshot_split": fewshot_split}
    # Name the splits explicitly: lm-eval would otherwise prefer `training_split` for few-shot.
    base["fewshot_config"] = {**base.get("fewshot_config", {}), "split": fewshot_split}
    if mirror is None:
        base.update(dataset_path=spec.hub, dataset_name=None if spec.config == "default" else spec.config)
    else:
        files = {s: str(mirror_file(mirror, spec, s)) for s in {eval_split, fewshot_split} if s}
        missing = [f for f in files.values() if not Path(f).is_file()]
        if missing:
            raise MissingInput(
                f"task {task}: the mirror has no {missing[0]}; the mirror must hold "
                f"{spec.hub}/{spec.config}/<split>.jsonl for splits {sorted(files)}"
            )
        base.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files})
    if task != "mmlu":
        return [{**base, "task": f"{PREFIX}{task}"}]
    unknown = sorted(set(subjects or ()) - set(MMLU_SUBJECTS))
    if unknown:
        raise InputError(f"evaluate.tasks.mmlu.subjects: unknown subject(s) {unknown}; choose from {MMLU_SUBJECTS}")
    return [
        {
            **base,
            "task": name,
            "task_alias": name.removeprefix(f"{PREFIX}mmlu_"),
            "process_docs": partial(mmlu_subject_docs, subject=subject),
            "description": f"The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n",
        }
        for name, subject in zip(task_names(task, subjects), subjects or MMLU_SUBJECTS)
    ]


def input_fingerprint(task: str, mirror: Path | None) -> dict:
    """What identifies a task's data: the sha256 of each mirror file lm-eval reads for it (eval and
    few-shot splits), or without a mirror the hub commit of its dataset."""
    spec = TASKS[task]
    if mirror is None:
        from huggingface_hub import HfApi  # hub access only without a mirror

        return {"kind": "hub", "repo": spec.hub, "sha": HfApi().dataset_info(spec.hub).sha}
    files = sorted({mirror_file(mirror, spec, s) for s in splits(spec, mirror) if s})
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise MissingInput(f"task {task}: the mirror has no {missing[0]}")
    return {"kind": "file", "files": {f.relative_to(mirror).as_posix(): file_digest([f]) for f in files}}
