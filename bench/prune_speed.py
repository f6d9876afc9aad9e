"""Measured decode speed of the base and the pruned model on vLLM, against the analytic FLOPs saving.

    python bench/prune_speed.py --base data/models/base --pruned data/models/pruned \
        --prune-metrics metrics/prune/prune.json --prompts 64 --max-tokens 128 [--compiled] [--repeats 2]

Both models decode the same chat-rendered prompts (alpaca instructions from the prepared data)
greedily for exactly --max-tokens tokens (ignore_eos), each model in its own process (a vLLM engine
does not free everything when deleted), warm-up request first. Reports generated tokens/s per
model (the best of --repeats runs, end-to-end generate() time including prefill), the measured time
saving 1 - t_pruned / t_base, and its ratio to the FLOPs reduction in prune.json (issue target >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prompts(model_dir: str, prepared: str, count: int) -> list[list[int]]:
    import pandas as pd
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = pd.read_parquet(prepared).head(count)
    if len(rows) < count:
        raise ValueError(f"{prepared} has {len(rows)} rows, fewer than --prompts {count}")
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": r}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for r in rows["instruction"]
    ]


def measure(model_dir: str, args) -> dict:
    """Run in a child process: build the engine, warm up, time generate() --repeats times."""
    from vllm import LLM, SamplingParams

    ids = prompts(model_dir, args.prepared, args.prompts)
    start = time.perf_counter()
    llm = LLM(
        model=model_dir,
        dtype="bfloat16",
        max_model_len=1024,
        gpu_memory_utilization=args.memory,
        enforce_eager=not args.compiled,
        seed=0,
    )
    startup = time.perf_counter() - start
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    llm.generate([{"prompt_token_ids": ids[0]}], sampling, use_tqdm=False)  # warm-up
    runs = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in ids], sampling, use_tqdm=False)
        seconds = time.perf_counter() - t
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        runs.append({"seconds": round(seconds, 3), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 2)})
    return {
        "model": model_dir,
        "startup_s": round(startup, 1),
        "runs": runs,
        "tokens_per_s": max(r["tokens_per_s"] for r in runs),
    }


def child(model_dir: str, argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run(
            [sys.executable, __file__, *argv, "--child", model_dir, "--child-out", str(out)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"benchmark of {model_dir} failed:\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="data/models/base")
    parser.add_argument("--pruned", default="data/models/pruned")
    parser.add_argument("--prune-metrics", default="metrics/prune/prune.json")
    parser.add_argument("--prepared", default="data/prepared/alpaca.parquet")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--memory", type=float, default=0.1, help="vLLM gpu_memory_utilization (CPU: RAM fraction for KV cache)"
    )
    parser.add_argument("--compiled", action="store_true", help="let vLLM compile (slower start, faster decode)")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        Path(args.child_out).write_text(json.dumps(measure(args.child, args)))
        return
    argv = [a for a in sys.argv[1:]]
    base, pruned = child(args.base, argv), child(args.pruned, argv)
    flops = json.loads(Path(args.prune_metrics).read_text())["flops_reduction_pct"]
    saving = 100.0 * (1 - base["tokens_per_s"] / pruned["tokens_per_s"])
    result = {
        "base": base,
        "pruned": pruned,
        "speedup": round(pruned["tokens_per_s"] / base["tokens_per_s"], 4),
        "time_saving_pct": round(saving, 2),
        "flops_reduction_pct": flops,
        "saving_over_flops_reduction": round(saving / flops, 3),
        "settings": {
            "prompts": args.prompts,
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "compiled": args.compiled,
            "dtype": "bfloat16",
        },
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
