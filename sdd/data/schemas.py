"""Data contracts (pandera), versioned; checked when an artifact is written and when it is read.

Canonical prepared rows: id, dataset, instruction, context, response, answer.
Distilled rows add response_original, response_distilled, selected and reason.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.pandas import Check, Column

_text = Check(lambda s: s.str.strip().str.len() > 0, element_wise=False, name="non_blank")
_id = Check.str_matches(r"^[0-9a-f]{16}$", name="hex16_id")

PREPARED_COLUMNS = {
    "id": Column(str, checks=_id, unique=True),
    "dataset": Column(str, checks=_text),
    "instruction": Column(str, checks=_text),
    "context": Column(str),
    "response": Column(str, checks=_text),
    "answer": Column(str, nullable=True),
}

PREPARED = pa.DataFrameSchema(PREPARED_COLUMNS, strict=True, ordered=True, name="prepared", metadata={"version": 1})

REJECTED = pa.DataFrameSchema(
    {
        "dataset": Column(str),
        "row": Column(int, Check.ge(0)),
        "reason": Column(str, checks=_text),
        "raw": Column(str),
    },
    strict=True,
    ordered=True,
    name="rejected",
    metadata={"version": 1},
)

SELECTED = ("distilled", "original")
# Why each distilled row kept its response (sdd/data/answers.py `judge` returns one of these).
REASONS = ("accepted", "empty", "truncated", "leak", "too_short", "no_answer", "wrong_answer", "prompt_too_long")
FINISH_REASONS = ("stop", "length", "answer_line", "not_generated")  # answer_line: cut after "#### N"

DISTILLED = pa.DataFrameSchema(
    {
        **PREPARED_COLUMNS,
        "response_original": Column(str, checks=_text),
        "response_distilled": Column(str),
        "selected": Column(str, Check.isin(SELECTED)),
        "reason": Column(str, Check.isin(REASONS)),
        "finish_reason": Column(str, Check.isin(FINISH_REASONS)),
        "prompt_tokens": Column(int, Check.ge(0)),
        "generated_tokens": Column(int, Check.ge(0)),
    },
    strict=True,
    ordered=True,
    name="distilled",
    metadata={"version": 3},  # 2: reason and finish_reason restricted to known values; 3: answer_line
)

# One row per evaluated item and model (evaluate@<model>); the report pairs rows of two models on
# (task, subtask, doc_id) for the paired bootstrap.
EVAL_SAMPLES = pa.DataFrameSchema(
    {
        "model": Column(str, checks=_text),
        "task": Column(str, checks=_text),  # leaderboard task (arc_challenge, mmlu, ...)
        "subtask": Column(str, checks=_text),  # lm-eval task (MMLU: one per subject)
        "doc_id": Column(int, Check.ge(0)),
        "doc_hash": Column(str),  # lm-eval's hash of the document: same item across models
        "score": Column(float, Check.in_range(0.0, 1.0)),  # the task's leaderboard metric on this item
        "chance": Column(float, Check.in_range(0.0, 1.0)),  # expected score of uniform guessing
        "target": Column(str),
        "prediction": Column(str),  # chosen option index, or the filtered generation
        # multiple choice: the right choice's log-likelihood minus the best other one's (length-normalised
        # where the metric is acc_norm), a continuous view of the same decision; NaN for generation and MC2
        "margin": Column(float, nullable=True),
    },
    strict=True,
    ordered=True,
    unique=["model", "subtask", "doc_id"],
    name="eval_samples",
    metadata={"version": 2},
)
