"""Benchmark of the teacher-logits stage's two possible engines, the artifact size, and KD training
throughput vs SFT on the same rows (not a test; figures go to BENCHMARKS.md).

    python bench/teacher_logits_speed.py --k 64 --train-steps 4

Needs the demo's base and pruned models and prepared data (`dvc repro prune prepare@gsm8k prepare@alpaca`).
On the prepared rows of both datasets (chat-rendered exactly as fine-tuning renders them):
  1. transformers: `sdd.model.teacher.topk_pieces` (packed rows, logits only at response positions);
  2. vLLM: `LLM.generate(max_tokens=1, prompt_logprobs=k)` on the same token ids (engine start timed
     apart), top-k converted to the same arrays and compared with (1);
  3. the artifact (safetensors shards) written from (1): bytes per 1,000 rows;
  4. `--train-steps` optimizer steps of the pruned model with the SFT loss and with the KD loss
     (LoRA, the `finetune` section's settings): real tokens per second of each.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rows_of(params) -> list[dict]:
    from sdd.model.recipe import dataset_rows

    return [r for ds in ("gsm8k", "alpaca") for r in dataset_rows(params.paths, ds, "original")]


def examples_of(params, tok) -> list[dict]:
    """Every response token, as the teacher stage encodes them (no truncation)."""
    from sdd.data.examples import encode_rows

    return encode_rows(_rows_of(params), tok, max_seq_len=1 << 30, overlong="truncate")[0]


def hf_pieces(params, k: int) -> tuple[list[dict], dict]:
    import torch

    from sdd.model import teacher
    from sdd.model.checkpoint import load_model

    cfg = params.teacher_logits
    model, tok = load_model(params.paths.model_dir("base"), cfg.dtype)
    examples = examples_of(params, tok)
    start = time.perf_counter()
    pieces = list(teacher.topk_pieces(model, examples, k, cfg.batch_tokens, "cpu"))
    seconds = time.perf_counter() - start
    tokens = sum(len(e["input_ids"]) for e in examples)
    del model
    torch.set_num_threads(os.cpu_count() or 1)
    return pieces, {
        "engine": "transformers",
        "rows": len(examples),
        "forward_tokens": tokens,
        "response_tokens": sum(len(p["tokens"]) for p in pieces),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
    }


def vllm_pieces(params, k: int, reference: list[dict]) -> dict:
    import torch
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from sdd.generate.engines import build_vllm, shutdown_vllm
    from sdd.model.teacher import response_positions

    model_dir = params.paths.model_dir("base")
    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = examples_of(params, tok)
    engine = params.distill.engine_args.model_copy(
        update={"dtype": params.teacher_logits.dtype, "max_model_len": max(len(e["input_ids"]) for e in examples) + 8}
    )
    start = time.perf_counter()
    llm = build_vllm(model_dir, engine, max_logprobs=k)
    started = time.perf_counter() - start
    try:
        begin = time.perf_counter()
        outs = llm.generate(
            [{"prompt_token_ids": e["input_ids"]} for e in examples],
            SamplingParams(max_tokens=1, prompt_logprobs=k, temperature=0.0),
            use_tqdm=False,
        )
        seconds = time.perf_counter() - begin
    finally:
        shutdown_vllm(llm)
    top1_same, max_diff, compared = 0, 0.0, 0
    for ex, out, ref in zip(examples, outs, reference, strict=True):
        for n, j in enumerate(response_positions(ex["labels"])):
            entry = out.prompt_logprobs[j + 1]  # logprobs of token j + 1 given tokens 0..j
            ranked = sorted(((lp.rank, tid, lp.logprob) for tid, lp in entry.items() if lp.rank <= k))
            ids = torch.tensor([tid for _, tid, _ in ranked[:k]])
            values = torch.tensor([v for _, _, v in ranked[:k]])
            top1_same += int(ids[0] == ref["topk_ids"][n, 0])
            max_diff = max(max_diff, float((values - ref["topk_logprobs"][n, : len(values)].float()).abs().max()))
            compared += 1
    tokens = sum(len(e["input_ids"]) for e in examples)
    return {
        "engine": "vllm prompt_logprobs",
        "engine_start_seconds": round(started, 2),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        "top1_agreement_with_transformers": round(top1_same / compared, 4),
        "max_abs_logprob_difference": round(max_diff, 4),
    }


def artifact_size(pieces: list[dict]) -> dict:
    from sdd.model.teacher import write_shard

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.safetensors"
        write_shard(path, pieces)
        size = path.stat().st_size
    tokens = sum(len(p["tokens"]) for p in pieces)
    return {
        "bytes": size,
        "bytes_per_1000_rows": round(size * 1000 / len(pieces)),
        "bytes_per_response_token": round(size / tokens, 1),
    }


def train_throughput(params, pieces: list[dict], steps: int) -> list[dict]:
    from transformers import Trainer, set_seed

    from sdd.data.examples import encode_rows
    from sdd.model import kd
    from sdd.model import training as ft
    from sdd.model.checkpoint import load_model
    from sdd.model.teacher import Row
    from sdd.runtime import device

    cfg = params.finetune.model_copy(update={"max_steps": steps, "eval_steps": 10**6, "save_steps": 10**6})
    by_id = {p["id"]: Row(p["tokens"], p["topk_ids"], p["topk_logprobs"], p["rest_logmass"]) for p in pieces}
    results = []
    for objective in ("sft", "kd"):
        model, tok = load_model(params.paths.model_dir("pruned"), "float32")
        examples = encode_rows(_rows_of(params), tok, cfg.max_seq_len, cfg.overlong)[0]
        collator = ft.collator(tok, cfg.batching)
        extra = {}
        if objective == "kd":
            examples = kd.attach_teacher(examples, lambda ex: by_id[ex["id"]])
            collator, extra = kd.WithTeacher(collator), {"kd": cfg.kd}
        with tempfile.TemporaryDirectory() as out:
            args = dataclasses.replace(
                ft.training_arguments(cfg, out, device()), eval_strategy="no", save_strategy="no"
            )
            set_seed(cfg.seed)
            trainer = (kd.OfflineKDTrainer if objective == "kd" else Trainer)(
                model=ft.apply_method(model, cfg),
                args=args,
                train_dataset=ft.ExampleDataset(examples),
                data_collator=collator,
                **extra,
            )
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
        real = int(trainer.state.num_input_tokens_seen)
        results.append(
            {
                "objective": objective,
                "steps": steps,
                "real_tokens": real,
                "seconds": round(seconds, 1),
                "tokens_per_second": round(real / seconds, 1),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--skip-vllm", action="store_true")
    args = parser.parse_args()
    from sdd.config import load_params

    params = load_params()
    load = os.getloadavg()
    pieces, hf = hf_pieces(params, args.k)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "k": args.k,
        "dtype": params.teacher_logits.dtype,
        "transformers": hf,
        "artifact": artifact_size(pieces),
    }
    if not args.skip_vllm:
        results["vllm"] = vllm_pieces(params, args.k, pieces)
    if args.train_steps:
        results["training"] = train_throughput(params, pieces, args.train_steps)
    results["loadavg_before_after"] = [round(load[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
