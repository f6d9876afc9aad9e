"""Training examples from canonical rows: the rendered text tokenised with the loss on the response
only, and the held-out split every arm shares. Used by fine-tuning, the teacher logits, speculation
prompts and the held-out measures, so they all see the same tokens.

    examples, counts = encode_rows(rows, tokenizer, max_seq_len=512, overlong="truncate", rendering="chat")

Renderings (`finetune.rendering`): `chat`, the model's chat template (user turn, assistant turn);
`plain`, the prompt as plain text, a blank line and the response followed by the end-of-sequence
token, the format plain-text benchmarks present (no chat markers).
    held_out = split_by_id([r["id"] for r in rows], fraction=0.1, seed=0)
"""

from __future__ import annotations

import hashlib
from collections import Counter

from sdd.data.chat import conversation_text, prompt_text, user_message
from sdd.errors import InputError

IGNORE = -100  # label value that the causal-LM loss skips (transformers/PyTorch convention)


def encode(
    tokenizer, instruction: str, context: str | None, response: str, rendering: str = "chat"
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one rendered example; labels are IGNORE on every prompt token.

    The prompt is the chat template up to the assistant's turn (`add_generation_prompt`); the
    completion is the rest of the rendered conversation (response, end-of-turn token). They are
    tokenized separately, so the boundary never merges a prompt token with a response token.
    """
    if rendering == "plain":
        prompt_ids = tokenizer(user_message(instruction, context) + "\n\n", add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(response.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids
    prompt = prompt_text(tokenizer, instruction, context)
    full = conversation_text(tokenizer, instruction, context, response)
    if not full.startswith(prompt):
        raise InputError(
            "the chat template renders the prompt differently with and without the assistant's turn; "
            "a response-only loss needs a template whose generation prompt is a prefix of the conversation"
        )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + list(completion_ids)


def encode_rows(
    rows: list[dict], tokenizer, max_seq_len: int, overlong: str, rendering: str = "chat"
) -> tuple[list[dict], dict]:
    """Encode rows (keys id, instruction, context, response); over-long rows are truncated or dropped.

    A row whose prompt alone fills `max_seq_len` has no response token left to learn from and is
    dropped either way. Returns the examples and counts of what happened (for metrics).
    """
    examples: list[dict] = []
    counts: Counter[str] = Counter()
    for row in rows:
        ids, labels = encode(tokenizer, row["instruction"], row["context"], row["response"], rendering)
        if len(ids) > max_seq_len:
            counts["overlong"] += 1
            if overlong == "drop":
                counts["dropped_overlong"] += 1
                continue
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            if all(label == IGNORE for label in labels[1:]):
                counts["dropped_prompt_too_long"] += 1
                continue
            counts["truncated"] += 1
        examples.append({"id": row["id"], "input_ids": ids, "labels": labels})
    counts["kept"] = len(examples)
    counts["tokens"] = sum(len(e["input_ids"]) for e in examples)
    counts["response_tokens"] = sum(sum(label != IGNORE for label in e["labels"]) for e in examples)
    return examples, dict(counts)


def split_by_id(ids: list[str], fraction: float, seed: int) -> set[str]:
    """The held-out ids: the `fraction` (at least one) with the smallest hash of (seed, id).

    It depends only on the ids, so every arm holds out the same rows of a dataset whether it
    trains on the original or the distilled response (distillation keeps the prepared id).
    """
    if len(ids) < 2:
        raise InputError(f"{len(ids)} row(s): need at least 2 to hold one out for validation")
    n = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:n])
