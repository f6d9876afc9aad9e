"""Format adapters: one raw source row -> one canonical row, or a rejection reason.

Canonical row: id, dataset, instruction, context, response, answer.
`adapt_rows` is pure: it takes decoded raw rows (or decode errors) and returns accepted rows,
rejected rows with reasons, and counts. Nothing is dropped without a reason.

Text rules (every string of a row, field names included): a lone surrogate (JSON "\\ud800") or a
control character other than tab, newline and carriage return rejects the row; a field made only
of invisible characters (whitespace, zero-width and other format characters, Unicode category Cf)
is empty.
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from sdd.cache import fingerprint
from sdd.data.answers import InexactAnswer, after_last_marker, exact_number

GSM8K_CALC = re.compile(r"<<[^<>]*>>")
ALPACA_TEMPLATE = re.compile(
    r"^\s*Below is an instruction that describes a task(?:, paired with an input that provides further context)?\."
    r" Write a response that appropriately completes the request\.\s*"
    r"### Instruction:\s*(?P<instruction>.*?)\s*(?:### Input:\s*(?P<context>.*?)\s*)?### Response:\s*$",
    re.S,
)


class RowError(ValueError):
    """A row that cannot become a canonical row; the message is the rejection reason."""


# C0 and C1 control characters and DEL (category Cc), except tab, newline and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class JsonFloat(float):
    """A JSON number that a float does not hold exactly ("12345678901234567890.5" reads as
    1.2345678901234567e+19, "1e400" as inf): that float, plus `literal`, the number as the file
    writes it. `sdd.data.sources` reads such numbers so; everywhere else it is a float."""

    __slots__ = ("literal",)
    literal: str

    def __new__(cls, literal: str) -> JsonFloat:
        number = super().__new__(cls, literal)
        number.literal = literal
        return number


def _strings(value: object):
    """Every string inside a decoded value (nested lists and objects included, keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def check_text(row: dict) -> None:
    """Raise RowError naming the field and code point of a lone surrogate or control character."""
    for key, value in row.items():
        for text in _strings({key: value}):
            if bad := _SURROGATE.search(text):
                raise RowError(f"field {key!r} is not valid Unicode (lone surrogate U+{ord(bad[0]):04X})")
            if bad := _CONTROL.search(text):
                raise RowError(
                    f"field {key!r} contains control character U+{ord(bad[0]):04X} "
                    "(only tab, newline and carriage return are allowed)"
                )


def visible(text: str) -> bool:
    """True when `text` has a character that shows: not whitespace, not a format character (Cf)."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text)


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
    if not visible(value):
        if not required:
            return ""
        raise RowError(f"field {key!r} is empty" + (" (only invisible characters)" if value.strip() else ""))
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
    if not visible(instruction):
        raise RowError("field 'prompt' has an empty instruction")
    return {
        "instruction": instruction,
        "context": (match["context"] or "").strip(),
        "response": _text(row, "response"),
        "answer": None,
    }


def gsm8k(row: dict) -> dict:
    """The final answer is the number after the LAST `####` (`sdd.data.answers.gsm8k_answer`), kept
    exactly ("1,000" -> "1000", 400 digits stay 400 digits); one that cannot be is a rejection."""
    solution = _text(row, "answer")
    stated = after_last_marker(solution)
    if stated is None:
        raise RowError("field 'answer' has no final answer after '####'")
    try:
        answer = exact_number(stated)
    except InexactAnswer as err:
        raise RowError(f"field 'answer' has a final answer that cannot be kept exactly ({err})") from err
    if answer is None:
        raise RowError("field 'answer' has no number after its last '####'")
    # Calculator annotations (<<48/2=24>>) are tool markup, not language: strip them.
    response = GSM8K_CALC.sub("", solution)
    return {
        "instruction": _text(row, "question"),
        "context": "",
        "response": response,
        "answer": answer,
    }


def openmath(row: dict) -> dict:
    """OpenMathInstruct-1 (`question`) and -2 (`problem`), `generated_solution`, `expected_answer`.

    A JSON number a float cannot hold (`JsonFloat`: "12345678901234567890.5") is kept as written.
    """
    answer = row.get("expected_answer")
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        raise RowError("field 'expected_answer' is missing or null")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise RowError(f"field 'expected_answer' must be text or a number, got {type(answer).__name__}")
    answer = (answer.literal if isinstance(answer, JsonFloat) else str(answer)).strip()
    if not visible(answer):
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
        reasons = Counter(reason_kind(r["reason"]) for r in self.rejected)
        return {
            "accepted": len(self.accepted),
            "rejected": len(self.rejected),
            "rejected_by_reason": dict(sorted(reasons.items())),
        }

    def top_reasons(self, n: int = 3, rows: int = 3) -> list[tuple[str, int, list[int]]]:
        """The `n` most frequent reasons (`reason_kind`), each with its count and first `rows` rows."""
        first: dict[str, list[int]] = {}
        for r in self.rejected:
            first.setdefault(reason_kind(r["reason"]), []).append(r["row"])
        ranked = sorted(first.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
        return [(kind, len(found), found[:rows]) for kind, found in ranked[:n]]


# What differs from row to row inside one kind of reason: a line, byte or row number, a size.
_ROW_SPECIFIC = re.compile(r"\b(line|byte|row) \d+|^too long: \d+")


def reason_kind(reason: str) -> str:
    """A reason with its row-specific numbers replaced by N, so equal causes count together.

    "missing field: 'instruction'" stays whole; "malformed json: line 8: ..." -> "malformed json: line N: ...".
    """
    return _ROW_SPECIFIC.sub(lambda m: m[0].rsplit(" ", 1)[0] + " N", reason)


def formats_that_fit(rows: list[RawRow], limit: int = 200) -> dict[str, int]:
    """How many of the first `limit` decoded object rows each format's adapter accepts."""
    objects = [r.value for r in rows if r.error is None and isinstance(r.value, dict)][:limit]
    fits = dict.fromkeys(ADAPTERS, 0)
    for value in objects:
        for fmt, adapter in ADAPTERS.items():
            try:
                adapter(value)
            except RowError:
                continue
            fits[fmt] += 1
    return fits


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
        shown = shown.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate as its escape
        out.rejected.append({"dataset": dataset, "row": raw.index, "reason": reason, "raw": shown[:2000]})

    for raw in rows:
        if raw.error is not None:
            reject(raw, raw.error)
            continue
        if not isinstance(raw.value, dict):
            reject(raw, f"wrong type: row is {type(raw.value).__name__}, expected a JSON object")
            continue
        try:
            check_text(raw.value)
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
