"""Self-data distillation runs: generate rewrites chunk by chunk (resumable), then select.

    run = generate_rewrites(cfg, model_dir, prompts, row_ids, fits, store)   # chunks saved as they finish
    rows = apply_selection(rows, run.generations, check_answers, cfg.leak_phrases, cfg.min_length_ratio, True)

The engine is built on first use, so a fully resumed run starts none; it is always shut down
before returning. Timings separate the engine start from generation.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdd.cache import PieceStore, fingerprint
from sdd.config.distill import DistillParams
from sdd.data.prompts import Template, build_messages, render
from sdd.data.prompts import fingerprint as template_fingerprint
from sdd.generate import engines
from sdd.generate.engines import Generation
from sdd.runtime import device

log = logging.getLogger(__name__)


def run_key(model_digest: str, rows: list[dict], template: Template, cfg: DistillParams) -> str:
    """Cache key of the generations: what changes any generated text changes this key."""
    settings = {
        "engine": cfg.engine,
        # not data_parallel_size: a chunk's text does not depend on which engine made it
        "engine_args": cfg.engine_args.model_dump(exclude={"data_parallel_size"}),
        "sampling": cfg.sampling.model_dump(),
        "chunk_size": cfg.chunk_size,
        "hf_batch_size": cfg.hf_batch_size if cfg.engine == "hf" else None,
        "budget": [cfg.budget_ratio, cfg.budget_floor],
    }
    return fingerprint(
        {
            "model": model_digest,
            "template": template_fingerprint(template),
            "settings": settings,
            "rows": [[r["id"], r["instruction"], r["context"], r["response"]] for r in rows],
        }
    )


def token_budgets(cfg: DistillParams, response_tokens: list[int]) -> list[int]:
    """Each row's cap on generated tokens: `budget_ratio` x its original response's tokens (at
    least `budget_floor`, at most `sampling.max_tokens`). A rewrite that needs more is almost
    always a repetition loop, rejected as truncated anyway: stopping it early saves the tokens."""
    cap = cfg.sampling.max_tokens
    if cfg.budget_ratio is None:
        return [cap] * len(response_tokens)
    return [min(cap, max(cfg.budget_floor, math.ceil(cfg.budget_ratio * n))) for n in response_tokens]


def encode_prompts(
    tokenizer: Any, rows: list[dict], template: Template, cfg: DistillParams
) -> tuple[list[list[int]], list[int], list[bool]]:
    """(prompt token ids, token budget, whether prompt + budget fit max_model_len) of each row; rows
    that do not fit keep their original response (reason prompt_too_long), with a warning."""
    prompts = [
        tokenizer(render(tokenizer, build_messages(r, template)), add_special_tokens=False).input_ids for r in rows
    ]
    budgets = token_budgets(cfg, [len(tokenizer(r["response"], add_special_tokens=False).input_ids) for r in rows])
    fits = [len(p) + b <= cfg.engine_args.max_model_len for p, b in zip(prompts, budgets, strict=True)]
    if not all(fits):
        log.warning(
            "%d of %d prompts + their token budget exceed distill.engine_args.max_model_len=%d; those rows "
            "keep their original response (reason prompt_too_long)",
            fits.count(False),
            len(rows),
            cfg.engine_args.max_model_len,
        )
    return prompts, budgets, fits


def request_seed(seed: int, row_id: str) -> int:
    """Per-row sampling seed: the same row samples the same way whatever its batch or chunk."""
    return int(hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()[:8], 16)


class Engine:
    """Builds the chosen engine on first use (so a fully resumed run starts no engine)."""

    def __init__(self, cfg: DistillParams, model_dir: Path):
        self.cfg, self.model_dir, self.start_seconds = cfg, model_dir, 0.0
        self.impl: Any = None

    def generate(
        self, prompt_ids: list[list[int]], row_ids: list[str], chunk: int, budgets: list[int]
    ) -> list[list[Generation]]:
        cfg = self.cfg
        if self.impl is None:
            start = time.perf_counter()
            if cfg.engine == "vllm":
                sampling = engines.seeded_sampling_settings(cfg.sampling.temperature, cfg.engine_args.max_model_len)
                sequences = min(cfg.chunk_size, 256) * cfg.sampling.n  # a chunk's requests at once
                key = "distill.engine_args"
                self.impl = engines.build_vllm(self.model_dir, cfg.engine_args, sequences, key, **sampling)
            else:
                from sdd.model.checkpoint import load_model

                self.impl = load_model(self.model_dir, cfg.engine_args.dtype, device())
            self.start_seconds = time.perf_counter() - start
        if cfg.engine == "vllm":
            # Per-row seeds: a row's random draws do not depend on its neighbours (the batch can still
            # shift its logits; chunks are fixed, so a re-run reproduces them); greedy needs none.
            sampled = cfg.sampling.temperature > 0
            seeds = [request_seed(cfg.engine_args.seed, i) for i in row_ids] if sampled else None
            return engines.generate_vllm(self.impl, prompt_ids, cfg.sampling, seeds, budgets=budgets)
        model, tok = self.impl
        return engines.generate_hf(
            model,
            tok,
            prompt_ids,
            cfg.sampling,
            cfg.hf_batch_size,
            seed=cfg.engine_args.seed + 100_003 * chunk,
            budgets=budgets,
        )

    def close(self) -> None:
        """Shut a vLLM engine down before the stage exits (see engines.shutdown_vllm)."""
        if self.cfg.engine == "vllm" and self.impl is not None:
            engines.shutdown_vllm(self.impl)
        self.impl = None


@dataclass
class Rewrites:
    generations: list[list[Generation]] = field(default_factory=list)
    chunks: int = 0
    chunks_reused: int = 0
    generation_seconds: float = 0.0
    engine_start_seconds: float = 0.0
    generated_tokens: int = 0  # generated by this run (reused chunks excluded)


def generate_rewrites(
    cfg: DistillParams,
    model_dir: Path,
    prompts: list[list[int]],
    row_ids: list[str],
    fits: list[bool],
    store: PieceStore,
    budgets: list[int] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Rewrites:
    """Candidates for every row (an empty list where the prompt does not fit), chunk by chunk;
    each finished chunk is saved to `store` and read back on a re-run. With `shard` (rank, size)
    only the chunks c with c % size == rank (a data-parallel worker's share; the others are left out)."""
    engine, out = Engine(cfg, model_dir), Rewrites()
    budgets = budgets or [cfg.sampling.max_tokens] * len(prompts)
    rank, size = shard
    try:
        for c, start in enumerate(range(0, len(prompts), cfg.chunk_size)):
            if c % size != rank:
                continue
            part = range(start, min(start + cfg.chunk_size, len(prompts)))
            ids = [row_ids[i] for i in part]
            saved = store.load(f"chunk-{c:05d}", ids)
            out.chunks += 1
            if saved is not None:
                chunk = [[Generation(**g) for g in cands] for cands in saved]
                out.chunks_reused += 1
            else:
                todo = [i for i in part if fits[i]]
                t0 = time.perf_counter()
                made = iter(
                    engine.generate(
                        [prompts[i] for i in todo], [row_ids[i] for i in todo], c, [budgets[i] for i in todo]
                    )
                )
                chunk = [next(made) if fits[i] else [] for i in part]
                seconds = time.perf_counter() - t0
                if engine.start_seconds and not out.engine_start_seconds:  # the first chunk built the engine
                    out.engine_start_seconds = engine.start_seconds
                    seconds -= engine.start_seconds
                out.generation_seconds += seconds
                out.generated_tokens += sum(g.generated_tokens for cands in chunk for g in cands)
                store.save(f"chunk-{c:05d}", ids, [[vars(g) for g in cands] for cands in chunk])
                log.info("chunk %d: %d rows generated in %.1f s", c, len(todo), seconds)
            out.generations.extend(chunk)
    finally:
        engine.close()
    return out


def combine(assembled: Rewrites, workers: list[Rewrites]) -> Rewrites:
    """The run of data-parallel workers as one: the texts the main process assembled from the store,
    the work and the wall time of the workers (they ran side by side: the longest one counts)."""
    return Rewrites(
        generations=assembled.generations,
        chunks=assembled.chunks,
        chunks_reused=sum(w.chunks_reused for w in workers),
        generation_seconds=max(w.generation_seconds for w in workers),
        engine_start_seconds=max(w.engine_start_seconds for w in workers),
        generated_tokens=sum(w.generated_tokens for w in workers),
    )


def summarize(df, run: Rewrites) -> dict:
    """Details of a distillation run (the stage's plain output beside its headline metrics)."""
    kept = int((df["selected"] == "distilled").sum())
    gen = run.generation_seconds
    return {
        "rows": len(df),
        "kept_distilled": kept,
        "kept_distilled_fraction": round(kept / len(df), 4) if len(df) else 0.0,
        "fallbacks_by_reason": {
            k: int(v) for k, v in df.loc[df["selected"] == "original", "reason"].value_counts().items()
        },
        "prompt_tokens": int(df["prompt_tokens"].sum()),
        "generated_tokens": int(df["generated_tokens"].sum()),
        "truncated": int((df["finish_reason"] == "length").sum()),
        "ended_at_answer_line": int((df["finish_reason"] == "answer_line").sum()),
        "engine_start_seconds": round(run.engine_start_seconds, 2),
        "generation_seconds": round(gen, 2),
        "generated_tokens_this_run": run.generated_tokens,
        "generated_tokens_per_s": round(run.generated_tokens / gen, 2) if gen else None,
        "chunks": run.chunks,
        "chunks_reused": run.chunks_reused,
    }
