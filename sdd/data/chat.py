"""The one chat rendering of a canonical row (instruction, context, response) for every stage that
shows a row to a model: training examples, calibration text, fidelity and speculation prompts.

    prompt_text(tok, row["instruction"], row["context"])                  # user turn, ready for the reply
    conversation_text(tok, row["instruction"], row["context"], response)  # user turn + assistant turn

The distillation prompt (the base model sees the reference answer) is a different text: its
templates live in `sdd/data/prompts.py`.
"""

from __future__ import annotations

from typing import Any


def user_message(instruction: str, context: str | None) -> str:
    """The student's prompt: the instruction, and the context (alpaca `input`) below it when present."""
    context = (context or "").strip()
    return f"{instruction.strip()}\n\n{context}" if context else instruction.strip()


def messages(instruction: str, context: str | None, response: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "user", "content": user_message(instruction, context)}]
    if response is not None:
        turns.append({"role": "assistant", "content": response.strip()})
    return turns


def prompt_text(tokenizer: Any, instruction: str, context: str | None) -> str:
    """The user turn through the model's chat template, ending where the assistant's reply starts."""
    return tokenizer.apply_chat_template(messages(instruction, context), tokenize=False, add_generation_prompt=True)


def conversation_text(tokenizer: Any, instruction: str, context: str | None, response: str) -> str:
    """User turn and assistant turn through the model's chat template."""
    return tokenizer.apply_chat_template(messages(instruction, context, response), tokenize=False)
