"""Format adapters: one raw source row -> one canonical row, or a rejection reason.

Canonical row (DESIGN.md): id, dataset, instruction, context, response, answer.
`adapt_rows` is pure: it takes decoded raw rows (or decode errors) and returns accepted rows,
rejected rows with reasons, and counts. Nothing is dropped without a reason.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field

from sdd.cache import fingerprint

GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)
GSM8K_CALC = re.compile(r"<<[^<>]*>>")
ALPACA_TEMPLATE = re.compile(
    r"^\s*Below is an instruction that describes a task(?:, paired with an input that provides further context)?\."
    r" Write a response that appropriately completes the request\.\s*"
    r"### Instruction:\s*(?P<instruction>.*?)\s*(?:### Input:\s*(?P<context>.*?)\s*)?### Response:\s*$",
    re.S,
)


class RowError(ValueError):
    """A row that cannot become a canonical row; the message is the rejection reason."""


def _text(row: dict, key: str, *, required: bool = True) -> str:
    if key not in row:
        if required:
            raise RowError(f"missing field: {key!r}")
        return ""
    value = row[key]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise RowError(f"field {key!r} is null")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field {key!r} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(f"field {key!r} is empty")
    return value.strip()


def _one_of(row: dict, keys: tuple[str, ...]) -> str:
    for key in keys:
        if key in row:
            return _text(row, key)
    raise RowError(f"missing field: one of {list(keys)}")


def alpaca(row: dict) -> dict:
    return {
        "instruction": _text(row, "instruction"),
        "context": _text(row, "input", required=False),
        "response": _text(row, "output"),
        "answer": None,
    }


def dolly(row: dict) -> dict:
    return {
        "instruction": _text(row, "instruction"),
        "context": _text(row, "context", required=False),
        "response": _text(row, "response"),
        "answer": None,
    }


def dolly_hhrlhf(row: dict) -> dict:
    prompt = _text(row, "prompt")
    match = ALPACA_TEMPLATE.match(prompt)
    if match is None:
        raise RowError("field 'prompt' does not follow the Alpaca template ('### Instruction: ... ### Response:')")
    instruction = match["instruction"].strip()
    if not instruction:
        raise RowError("field 'prompt' has an empty instruction")
    return {
        "instruction": instruction,
        "context": (match["context"] or "").strip(),
        "response": _text(row, "response"),
        "answer": None,
    }


def gsm8k(row: dict) -> dict:
    solution = _text(row, "answer")
    match = GSM8K_ANSWER.search(solution)
    if match is None:
        raise RowError("field 'answer' has no final answer after '####'")
    # Calculator annotations (<<48/2=24>>) are tool markup, not language: strip them.
    response = GSM8K_CALC.sub("", solution)
    return {
        "instruction": _text(row, "question"),
        "context": "",
        "response": response,
        "answer": match[1].replace(",", "").strip(),
    }


def openmath(row: dict) -> dict:
    """OpenMathInstruct-1 (`question`) and -2 (`problem`), `generated_solution`, `expected_answer`."""
    answer = row.get("expected_answer")
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        raise RowError("field 'expected_answer' is missing or null")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise RowError(f"field 'expected_answer' must be text or a number, got {type(answer).__name__}")
    answer = str(answer).strip()
    if not answer:
        raise RowError("field 'expected_answer' is empty")
    return {
        "instruction": _one_of(row, ("question", "problem")),
        "context": "",
        "response": _text(row, "generated_solution"),
        "answer": answer,
    }


ADAPTERS = {"alpaca": alpaca, "dolly": dolly, "dolly_hhrlhf": dolly_hhrlhf, "gsm8k": gsm8k, "openmath": openmath}


def row_id(raw: dict) -> str:
    """Stable id: the first 16 hex digits of sha256 over the row's canonical JSON."""
    return fingerprint(raw)


@dataclass
class Adapted:
    accepted: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    def counts(self) -> dict:
        reasons = Counter(r["reason"].split(":")[0] for r in self.rejected)
        return {
            "accepted": len(self.accepted),
            "rejected": len(self.rejected),
            "rejected_by_reason": dict(sorted(reasons.items())),
        }


@dataclass(frozen=True)
class RawRow:
    """A decoded source row (`value`), or the reason it could not be decoded (`error`)."""

    index: int
    value: object = None
    error: str | None = None
    text: str = ""


def adapt_rows(rows, dataset: str, fmt: str, max_chars: int) -> Adapted:
    adapter = ADAPTERS[fmt]
    out = Adapted()
    seen: dict[tuple, int] = {}

    def reject(raw: RawRow, reason: str) -> None:
        shown = raw.text if raw.text else json.dumps(raw.value, ensure_ascii=False, default=str)
        out.rejected.append({"dataset": dataset, "row": raw.index, "reason": reason, "raw": shown[:2000]})

    for raw in rows:
        if raw.error is not None:
            reject(raw, raw.error)
            continue
        if not isinstance(raw.value, dict):
            reject(raw, f"wrong type: row is {type(raw.value).__name__}, expected a JSON object")
            continue
        try:
            canon = adapter(raw.value)
        except RowError as err:
            reject(raw, _reason(str(err)))
            continue
        size = sum(len(canon[k]) for k in ("instruction", "context", "response"))
        if size > max_chars:
            reject(raw, f"too long: {size} characters > prepare.max_chars={max_chars}")
            continue
        key = (canon["instruction"], canon["context"], canon["response"])
        if key in seen:
            reject(raw, f"duplicate: same instruction, context and response as row {seen[key]}")
            continue
        seen[key] = raw.index
        out.accepted.append({"id": row_id(raw.value), "dataset": dataset, **canon})
    return out


def _reason(message: str) -> str:
    """Prefix each adapter message with a short category so counts group cleanly."""
    if message.startswith("missing field"):
        return message
    if "must be" in message:
        return f"wrong type: {message}"
    if "is empty" in message or "is null" in message:
        return f"empty text: {message}"
    return f"invalid: {message}"


def sample(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    """Deterministic subset: the same seed and rows give the same subset, in source order."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]
