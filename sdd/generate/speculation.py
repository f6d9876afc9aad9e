"""Speculative decoding measurements: vLLM's spec-decode counters -> acceptance metrics, and the
held-out prompts they are measured on, and one timed measurement on a built vLLM engine.

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

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdd.cache import fingerprint
from sdd.config.engine import EngineParams
from sdd.config.speculate import SpeculateParams
from sdd.data.chat import prompt_text
from sdd.errors import InputError

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
        raise InputError(
            "vLLM recorded no speculative steps: the run generated no tokens, or stats logging was off "
            "(build the LLM with disable_log_stats=False)"
        )
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
        raise InputError(
            f"speculate.prompts.per_dataset={count} but {dataset} has only {len(chosen)} rows held out "
            f"from fine-tuning (finetune.val_fraction); lower per_dataset or raise val_fraction"
        )
    return chosen


def prompts_fingerprint(prompt_ids: list[list[int]], settings: dict) -> str:
    """Identity of a measurement's workload (prompts, sampling, engine): baseline and drafts must share it."""
    return fingerprint({"prompts": prompt_ids, **settings})


@dataclass(frozen=True)
class Measurement:
    """One timed generation: tokens, seconds, tokens/s and the spec-decode counters it moved."""

    generated_tokens: int
    seconds: float
    tokens_per_s: float
    counters: SpecCounters


def held_out_rows(df: Any, dataset: str, count: int, val_fraction: float, seed: int) -> list[dict]:
    """`count` rows of a prepared dataset that finetune's validation split held out (never trained on)."""
    from sdd.data.examples import split_by_id

    held = split_by_id(df["id"].tolist(), val_fraction, seed)
    return held_out_prompts(df.to_dict("records"), [i for i in df["id"] if i in held], count, dataset)


def prompt_ids(tokenizer: Any, rows: list[dict]) -> list[list[int]]:
    """Chat-rendered token ids of the prompts (the user turn, ready for the reply)."""
    return [
        tokenizer(prompt_text(tokenizer, r["instruction"], r["context"]), add_special_tokens=False)["input_ids"]
        for r in rows
    ]


def measure(llm: Any, prompts: list[list[int]], max_tokens: int, temperature: float, seed: int) -> Measurement:
    """Generate once to warm up, then time one batched generation; return tokens, seconds, counters."""
    from vllm import SamplingParams

    warm = SamplingParams(temperature=temperature, max_tokens=8, seed=seed)
    llm.generate([{"prompt_token_ids": prompts[0]}], warm, use_tqdm=False)
    before = spec_counters(llm.get_metrics())
    sampling = [
        SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed + i) for i in range(len(prompts))
    ]
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return Measurement(tokens, seconds, tokens / seconds, spec_counters(llm.get_metrics()) - before)


def workload(cfg: SpeculateParams, engine: EngineParams, rows: list[dict], prompts: list[list[int]]) -> dict:
    """What baseline and drafts are measured on; `workload` fingerprints it so they must agree.
    `engine` is `cfg.engine_args` with its dtype resolved (a bf16 baseline never meets an fp32 draft)."""
    settings = {
        "max_tokens": cfg.prompts.max_tokens,
        "temperature": cfg.temperature,
        "target": cfg.target,
        "engine": engine.model_dump(),
    }
    return {
        "temperature": cfg.temperature,
        "num_prompts": len(prompts),
        "max_tokens": cfg.prompts.max_tokens,
        "prompt_ids": [r["id"] for r in rows],
        "workload": prompts_fingerprint(prompts, settings),
        "target": cfg.target,
    }


def baseline_for(path: Path, workload: str) -> dict:
    """speculate_base's metrics, checked to be measured on the same prompts and settings."""
    from sdd.artifacts import read_json

    baseline = read_json(path)
    if baseline.get("workload") != workload:
        raise InputError(f"{path} was measured on other prompts or settings; re-run it first: dvc repro speculate_base")
    return baseline


def draft_config(draft: Path, k: int) -> dict:
    """vLLM's `speculative_config` for a draft model directory proposing `k` tokens per step."""
    from sdd.model.checkpoint import check_model_dir

    check_model_dir(draft)
    return {"method": "draft_model", "model": str(draft), "num_speculative_tokens": k}


def draft_result(common: dict, run: Measurement, k: int, draft: str, baseline: dict) -> dict:
    """One draft's measurement: acceptance from vLLM's counters, tokens/s and the speed-up."""
    return {
        **common,
        **acceptance(run.counters, k),
        "k": k,
        "draft": draft,
        "generated_tokens": run.generated_tokens,
        "seconds": run.seconds,
        "tokens_per_s_spec": run.tokens_per_s,
        "tokens_per_s_base": baseline["tokens_per_s"],
        "speedup": run.tokens_per_s / baseline["tokens_per_s"],
    }
