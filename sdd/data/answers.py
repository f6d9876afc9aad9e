"""Final-answer extraction and the conditional selection of self-distilled responses.

    from sdd.data.answers import answers_match, extract_answer, gsm8k_answer, select
    extract_answer("... so she has 1,200 apples.\\n#### 1,200")        # -> "1200"
    gsm8k_answer("... #### 3/4")                                       # -> "3/4" (None: not a number)
    answers_match("0.50", "1/2")                                       # -> True (equal values)
    select(row_answer="72", candidates=[...], leak_phrases=(...))      # -> Choice

Numbers are normalised exactly, never through floating point: a decimal is rewritten digit by digit
(any length), a fraction is reduced with integers; one too long to reduce (`MAX_FRACTION_DIGITS`)
raises `InexactAnswer` where a caller asks for an exact number (`exact_number`).

Pure functions (value in, value out). Conditional selection follows self-data distillation
(Thangarasa et al. 2024, "Self-Data Distillation for Recovering Quality in Pruned LLMs", after
SDFT, Yang et al. 2024): a rewrite replaces the dataset's response only when it is usable, and,
where the task has a checkable answer, only when its final answer equals the reference.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction

# Order matters: the most explicit marker wins (a "####" line beats a number in the prose).
_MARKER = "####"  # GSM8k: the final answer follows the last one
_ANSWER_IS = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")
_CANONICAL_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/[1-9]\d*)?", re.ASCII)
_ANSWER_LINE = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]*)$", re.MULTILINE)


def _boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (or `\fbox{...}`), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return "".join(out)
        out.append(ch)
        i += 1
    return None  # unbalanced: the rewrite was cut off inside the box


# A fraction is reduced with Python integers; past this many digits (Python's own limit for reading
# an integer from text) converting it costs seconds to minutes, so it is not normalised.
MAX_FRACTION_DIGITS = 4300


class InexactAnswer(ValueError):
    """A number that cannot be normalised exactly: a fraction longer than `MAX_FRACTION_DIGITS`."""


def normalize_answer(value: str) -> str:
    r"""Canonical text of an answer so that equal answers compare equal.

    Removes `$`, thousands separators, LaTeX wrappers (`\text{}`, `\frac{a}{b}`, `\dfrac`),
    units/trailing words and a trailing period; numbers become their shortest exact form
    ("5.0" -> "5", "3/6" -> "1/2", "0.50" -> "0.5", 400 digits stay 400 digits). Non-numeric
    answers, and a fraction too long to reduce (`InexactAnswer`), are lower-cased and stripped
    of spaces, so "\text{(A)}" and "(a)" match.
    """
    try:
        return _normalized(value)
    except InexactAnswer:
        return re.sub(r"\s+", "", value).lower()


def _normalized(value: str) -> str:
    """`normalize_answer`, raising `InexactAnswer` for a number it cannot normalise exactly."""
    text = value.strip()
    text = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text)
    text = re.sub(r"\\(?:text|mathrm|mbox)\{([^{}]*)\}", r"\1", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\%", "%")
    text = text.strip().rstrip(".").strip()
    number = _NUMBER.match(text.replace("(", "").replace(")", ""))
    if number and not _leftover_is_math(text.replace("(", "").replace(")", "")[number.end() :]):
        return _canonical_number(number.group(0))
    return re.sub(r"\s+", "", text).lower()


def _leftover_is_math(rest: str) -> bool:
    """True when text after a leading number makes it an expression ("2x+1", "3^2"), not a unit."""
    return bool(re.match(r"\s*[+\-*/^=<>]|[a-zA-Z](?![a-zA-Z])", rest))


def _canonical_number(raw: str) -> str:
    """A `_NUMBER` match in its shortest exact form: "1,000" -> "1000", "-0.50" -> "-0.5", "6/8" -> "3/4".

    A zero denominator is left as it is ("1/0": not a number, see `numeric_answer`).
    """
    raw = _ascii_digits(re.sub(r"[\s$,]", "", raw))
    if "/" not in raw:
        return _decimal_text(raw)
    num, den = raw.split("/")
    if not den.strip("0"):
        return raw
    digits = len(num) + len(den)
    if digits > MAX_FRACTION_DIGITS:
        raise InexactAnswer(f"the fraction has {digits} digits; at most {MAX_FRACTION_DIGITS} can be reduced exactly")
    value = Fraction(Decimal(num)) / Fraction(Decimal(den))  # Decimal reads the text exactly
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _decimal_text(raw: str) -> str:
    """A decimal ("-007.50") rewritten digit by digit, exact at any length: no leading zeros before
    the point, no trailing zeros after it, no "-" on zero ("-7.5", "0")."""
    sign, digits = ("-", raw[1:]) if raw.startswith("-") else ("", raw)
    whole, _, decimals = digits.partition(".")
    decimals = decimals.rstrip("0")
    text = (whole.lstrip("0") or "0") + (f".{decimals}" if decimals else "")
    return "0" if text == "0" else sign + text


def _ascii_digits(text: str) -> str:
    """Other scripts' decimal digits ("٣", "３", which `\\d` matches) as ASCII digits."""
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text)


def answer_value(answer: str) -> Fraction | None:
    """The exact value of a normalised numeric answer ("0.5" and "1/2" -> Fraction(1, 2)); None for
    a non-numeric one, or one longer than `MAX_FRACTION_DIGITS` (compared as text only)."""
    if len(answer) > MAX_FRACTION_DIGITS or not _CANONICAL_NUMBER.fullmatch(answer):
        return None
    num, _, den = answer.partition("/")
    return Fraction(Decimal(num)) / (Fraction(Decimal(den)) if den else 1)


def after_last_marker(text: str) -> str | None:
    """What follows the LAST `####` on its line (GSM8k's final-answer marker), or None without one."""
    if _MARKER not in text:
        return None
    return text.rsplit(_MARKER, 1)[1].split("\n", 1)[0].strip()


def numeric_answer(value: str) -> str | None:
    """`value` as a canonical number ("-3", "1000", "2.5", "3/4"), or None when it is not a number
    (or one that cannot be normalised exactly, see `exact_number`)."""
    try:
        return exact_number(value)
    except InexactAnswer:
        return None


def exact_number(value: str) -> str | None:
    """`value` as a canonical number, exact ("-3", "1000", "2.5", "3/4"), or None when it is not a number.

    Accepts what `normalize_answer` reads as one number: a sign, `$`, thousands separators,
    decimals, fractions, a unit or word after it ("1,000 apples" -> "1000"); "2x+1" or "banana"
    is not a number. Raises `InexactAnswer` for a number it cannot normalise exactly.
    """
    canonical = _normalized(value)
    return canonical if _CANONICAL_NUMBER.fullmatch(canonical) else None


def gsm8k_answer(text: str) -> str | None:
    """GSM8k's final answer: the number after the LAST `####`, canonical; None when there is none.

    The one rule for a GSM8k solution, used by the gsm8k adapter (a row without one is rejected)
    and by `extract_answer` (the distillation answer check).
    """
    stated = after_last_marker(text)
    return None if stated is None else numeric_answer(stated)


def end_at_answer_line(text: str) -> str | None:
    """The solution up to and including its first `#### <number>` line, or None when it has no
    such line or nothing follows it.

    A GSM8k solution ends at that line (the dataset's format, and what the distillation template
    asks for). Small models often go on repeating the solution until max_tokens; the text after the
    answer line is not part of the solution, so the selection judges the solution without it.
    A Markdown heading (`#### Step 2`) is not an answer line.
    """
    for line in _ANSWER_LINE.finditer(text):
        if numeric_answer(line.group(1)) is not None:
            rest = text[line.end() :]
            return text[: line.end()] if rest.strip() else None
    return None


def extract_answer(text: str) -> str | None:
    r"""The final answer of a solution, normalised, or None when it states none.

    Tried in order: the number after the last `####` (GSM8k format, `gsm8k_answer`), the last
    `\boxed{...}` (MATH / OpenMathInstruct), the last "the answer is N" phrase, then the last number
    in the text. A last `####` followed by no number (a Markdown heading "#### Step 2") does not
    end the search.
    """
    marked = gsm8k_answer(text)
    if marked is not None:
        return marked
    boxed = _boxed(text)
    if boxed is not None and boxed.strip():
        return normalize_answer(boxed)
    stated = _ANSWER_IS.findall(text)
    if stated:
        first = _NUMBER.search(stated[-1])
        return normalize_answer(first.group(0) if first else stated[-1])
    numbers = _NUMBER.findall(text)
    return normalize_answer(numbers[-1]) if numbers else None


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """Equal after normalisation, numbers by exact value ("0.50" matches "1/2"); a missing
    prediction never matches."""
    if predicted is None or reference is None:
        return False
    left, right = normalize_answer(predicted), normalize_answer(reference)
    if left == right:
        return True
    value = answer_value(left)
    return value is not None and value == answer_value(right)


def leaked_phrase(text: str, phrases: tuple[str, ...] | list[str]) -> str | None:
    """The first prompt phrase (case-insensitive) the rewrite repeats, e.g. "the reference"."""
    lower = text.lower()
    return next((p for p in phrases if p.lower() in lower), None)


@dataclass(frozen=True)
class Choice:
    selected: str  # "distilled" or "original"
    reason: str  # "accepted" or why the rewrite was rejected
    candidate: int | None  # index of the kept candidate, None when the original is kept


def judge(candidate, reference_answer: str | None, leak_phrases, min_chars: int = 0) -> str:
    """Why a single rewrite is rejected, or "accepted" (one of sdd.data.schemas.REASONS).

    `candidate` has `text` and `finish_reason` ("stop", or "length" when max_tokens cut it off),
    e.g. a `sdd.generation.Generation`. `min_chars` rejects rewrites that drop the reasoning
    (a small model often answers a math problem with only "#### 72").
    """
    if not candidate.text.strip():
        return "empty"
    if candidate.finish_reason == "length":
        return "truncated"
    if leaked_phrase(candidate.text, leak_phrases):
        return "leak"
    if len(candidate.text.strip()) < min_chars:
        return "too_short"
    if reference_answer is not None:
        predicted = extract_answer(candidate.text)
        if predicted is None:
            return "no_answer"
        if not answers_match(predicted, reference_answer):
            return "wrong_answer"
    return "accepted"


def _ended(candidate):
    """The candidate cut after its first final-answer line (unchanged without one)."""
    cut = end_at_answer_line(candidate.text)
    return candidate if cut is None else replace(candidate, text=cut, finish_reason="answer_line")


def select(candidates: list, reference_answer: str | None, leak_phrases, min_chars: int = 0) -> Choice:
    """Keep the first acceptable rewrite; otherwise the original, with the first rewrite's reason.

    `reference_answer` None means the task has no checkable answer (general instructions).
    """
    if not candidates:  # not generated: the prompt did not fit max_model_len
        return Choice("original", "prompt_too_long", None)
    reasons = [judge(c, reference_answer, leak_phrases, min_chars) for c in candidates]
    for i, reason in enumerate(reasons):
        if reason == "accepted":
            return Choice("distilled", "accepted", i)
    return Choice("original", reasons[0], None)


def apply_selection(
    rows: list[dict],
    generations: list[list],
    check_answers: bool,
    leak_phrases,
    min_length_ratio: float = 0.0,
    end_at_answer: bool = False,
) -> list[dict]:
    """Distilled rows: each prepared row plus its rewrite, the selected response and the reason.

    `generations[i]` holds row i's candidates (empty when it was not generated). With
    `check_answers` (math datasets) a rewrite must reproduce the row's `answer`; every rewrite
    must be at least `min_length_ratio` times as long (in characters) as the original response.
    With `end_at_answer` (and `check_answers`) a rewrite ends at its first `#### <number>` line
    (`end_at_answer_line`; its finish_reason becomes "answer_line"), before it is judged.
    """
    out = []
    for row, candidates in zip(rows, generations, strict=True):
        if end_at_answer and check_answers:
            candidates = [_ended(c) for c in candidates]
        reference = row.get("answer") if check_answers else None
        choice = select(candidates, reference, leak_phrases, int(min_length_ratio * len(row["response"].strip())))
        shown = candidates[choice.candidate if choice.candidate is not None else 0] if candidates else None
        out.append(
            {
                **row,
                "response": shown.text if shown and choice.selected == "distilled" else row["response"],
                "response_original": row["response"],
                "response_distilled": shown.text if shown else "",
                "selected": choice.selected,
                "reason": choice.reason,
                "finish_reason": shown.finish_reason if shown else "not_generated",
                "prompt_tokens": shown.prompt_tokens if shown else 0,
                "generated_tokens": sum(c.generated_tokens for c in candidates),
            }
        )
    return out
