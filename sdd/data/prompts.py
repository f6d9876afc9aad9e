"""Prompt templates for self-data distillation, versioned in one place.

    from sdd.data.prompts import build_messages, render, template_for
    template = template_for("gsm8k")                       # the dataset's `format` picks the kind
    prompt = render(tokenizer, build_messages(row, template))

The base model sees the instruction (and context), the dataset's reference response, and is
asked to answer in its own words without mentioning the reference (self-data distillation,
Thangarasa et al. 2024, after SDFT, Yang et al. 2024). dvc.yaml lists this file as a dependency
of `distill`, and `fingerprint()` hashes the text, so editing a template re-runs generation.
Bump VERSION with every change of wording so old outputs are recognisably different.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sdd.cache import fingerprint as cache_fingerprint
from sdd.errors import InputError

VERSION = 1


@dataclass(frozen=True)
class Template:
    kind: str  # "general" or "math"
    system: str
    user: str  # str.format fields: instruction, context_block, reference


GENERAL = Template(
    kind="general",
    system="You are a helpful assistant.",
    user=(
        "Below is an instruction{context_note}, followed by an example of a good response.\n\n"
        "### Instruction:\n{instruction}\n\n"
        "{context_block}"
        "### Example response:\n{reference}\n\n"
        "Now write your own response to the instruction. Use the example as guidance for the content, "
        "but phrase it in your own words. Reply with the response only: do not mention the example "
        "or these directions."
    ),
)

MATH_GSM8K = Template(
    kind="math",
    system="You are a helpful assistant that solves math problems step by step.",
    user=(
        "Solve the problem below. A correct worked solution is given for guidance.\n\n"
        "### Problem:\n{instruction}\n\n"
        "{context_block}"
        "### Worked solution:\n{reference}\n\n"
        "Now write your own step-by-step solution in your own words. Do not mention the given solution. "
        "End with a last line of the form '#### <number>' that states the final answer."
    ),
)

MATH_BOXED = Template(
    kind="math",
    system=MATH_GSM8K.system,
    user=MATH_GSM8K.user.replace("a last line of the form '#### <number>'", "the final answer in \\boxed{...}"),
)

# Dataset `format` (datasets.<name>.format in params.yaml) -> template.
TEMPLATES = {
    "alpaca": GENERAL,
    "dolly": GENERAL,
    "dolly_hhrlhf": GENERAL,
    "gsm8k": MATH_GSM8K,
    "openmath": MATH_BOXED,
}


def template_for(dataset_format: str) -> Template:
    if dataset_format not in TEMPLATES:
        raise InputError(
            f"no distillation template for dataset format {dataset_format!r}; "
            f"known formats: {sorted(TEMPLATES)} (add one to sdd/prompts.py TEMPLATES)"
        )
    return TEMPLATES[dataset_format]


def build_messages(row: dict, template: Template) -> list[dict]:
    """Chat messages for one prepared row (keys instruction, context, response)."""
    context = (row.get("context") or "").strip()
    user = template.user.format(
        instruction=row["instruction"].strip(),
        context_note=" with its input" if context else "",
        context_block=f"### Input:\n{context}\n\n" if context else "",
        reference=row["response"].strip(),
    )
    return [{"role": "system", "content": template.system}, {"role": "user", "content": user}]


def render(tokenizer, messages: list[dict]) -> str:
    """Prompt text through the model's own chat template, ready for the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "the base model's tokenizer has no chat template; distillation prompts need one "
            "(base_model saves it; use an instruction-tuned model)"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def fingerprint(template: Template) -> str:
    """Hash of the template's version and full text (part of the generation cache key)."""
    return cache_fingerprint({"version": VERSION, **asdict(template)})
