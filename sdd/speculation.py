"""Speculative decoding measurements: vLLM's spec-decode counters -> acceptance metrics, and the
held-out prompts they are measured on. Pure functions; the stage (`stages/speculate.py`) runs vLLM.

    before = spec_counters(llm.get_metrics()); llm.generate(...); after = spec_counters(llm.get_metrics())
    acceptance(after - before, k)   # {"acceptance_rate": ..., "mean_accepted_length": ..., ...}

In one speculative step the draft proposes k tokens; the target scores them in one forward pass
and accepts the longest prefix that agrees with what it would have emitted itself (greedy), or
passes rejection sampling (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding", Alg. 1), then adds one token of its own. vLLM counts, per engine:
`vllm:spec_decode_num_drafts` (steps), `..._num_draft_tokens` (k per step),
`..._num_accepted_tokens` and `..._num_accepted_tokens_per_pos` (accepted at position i).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

PREFIX = "vllm:spec_decode_"


@dataclass(frozen=True)
class SpecCounters:
    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_pos: tuple[int, ...] = ()

    def __sub__(self, other: SpecCounters) -> SpecCounters:
        width = max(len(self.accepted_per_pos), len(other.accepted_per_pos))
        pad = lambda v: list(v) + [0] * (width - len(v))  # noqa: E731
        return SpecCounters(
            self.drafts - other.drafts,
            self.draft_tokens - other.draft_tokens,
            self.accepted_tokens - other.accepted_tokens,
            tuple(a - b for a, b in zip(pad(self.accepted_per_pos), pad(other.accepted_per_pos))),
        )


def spec_counters(metrics) -> SpecCounters:
    """Sum vLLM's spec-decode counters over engines from `LLM.get_metrics()` (vllm.v1.metrics.reader).

    Counters expose `.value`, the per-position vector `.values`. Without speculation (or with
    stats logging off) there are none, and every count is 0.
    """
    totals = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0}
    per_pos: list[int] = []
    for metric in metrics:
        name = metric.name.removeprefix(PREFIX)
        if not metric.name.startswith(PREFIX):
            continue
        if name == "num_accepted_tokens_per_pos":
            values = list(metric.values)
            per_pos = [a + b for a, b in zip(per_pos + [0] * (len(values) - len(per_pos)), values)]
        elif name in totals:
            totals[name] += int(metric.value)
    return SpecCounters(totals["num_drafts"], totals["num_draft_tokens"], totals["num_accepted_tokens"], tuple(per_pos))


def acceptance(counts: SpecCounters, k: int) -> dict:
    """Acceptance metrics of one measured run (vLLM's definitions, `v1/spec_decode/metrics.py`).

    - acceptance_rate = accepted / drafted tokens (1.0: the target agreed with every proposal);
    - mean_accepted_length = 1 + accepted / drafts: tokens emitted per target forward pass, the
      accepted prefix plus the target's own token (k + 1 at best, 1 when nothing is accepted);
    - per_position_acceptance[i] = fraction of steps whose i-th proposal was accepted
      (non-increasing in i: a token is accepted only after all tokens before it).
    """
    if counts.drafts <= 0 or counts.draft_tokens <= 0:
        raise ValueError("vLLM recorded no speculative steps: the run generated no tokens, or stats logging was off "
                         "(build the LLM with disable_log_stats=False)")
    per_pos = list(counts.accepted_per_pos) + [0] * (k - len(counts.accepted_per_pos))
    return {
        "acceptance_rate": counts.accepted_tokens / counts.draft_tokens,
        "mean_accepted_length": 1 + counts.accepted_tokens / counts.drafts,
        "per_position_acceptance": [n / counts.drafts for n in per_pos[:k]],
        "num_drafts": counts.drafts,
        "num_draft_tokens": counts.draft_tokens,
        "num_accepted_tokens": counts.accepted_tokens,
    }


def held_out_prompts(rows: list[dict], held_out: list[str], count: int, dataset: str) -> list[dict]:
    """The first `count` rows whose ids are in `held_out` (an ordered list), in that order.

    Fails when fewer are held out: a prompt the draft was fine-tuned on would inflate its acceptance.
    """
    by_id = {row["id"]: row for row in rows}
    chosen = [by_id[i] for i in held_out if i in by_id][:count]
    if len(chosen) < count:
        raise ValueError(f"speculate.prompts.per_dataset={count} but {dataset} has only {len(chosen)} rows held out "
                         f"from fine-tuning (finetune.val_fraction); lower per_dataset or raise val_fraction")
    return chosen


def prompts_fingerprint(prompt_ids: list[list[int]], settings: dict) -> str:
    """Identity of a measurement's workload (prompts, sampling, engine): baseline and drafts must share it."""
    blob = json.dumps({"prompts": prompt_ids, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
