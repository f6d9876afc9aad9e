"""Compute precision on this machine: what each dtype costs, and what `auto` chooses (not a test;
results go to BENCHMARKS.md).

    python bench/precision.py --model data/models/base --out .sdd-scratch/bench-precision.json

Per dtype (float32, bfloat16), on the machine it runs on:
  1. matmul GFLOP/s: a decoder-sized product (64 x 576 x 1536, SmolLM2's MLP) and a large one (1024^3);
  2. transformers forward tokens/s: `--batch` rows of `--length` tokens through the model, no grad;
  3. training tokens/s: LoRA steps as finetune runs them (fp32 weights; bf16 = autocast, as the
     Trainer's `bf16=True`), `--train-steps` steps of the same batch;
  4. bare vLLM generation tokens/s: `--prompts` prompts x `--tokens` tokens (ignore_eos), its own
     process per dtype, the engine built by the stages' `build_vllm`.
and what `auto` resolves to (sdd/hardware.py) with the CPU model and the flags that decided it.
Run it on an idle machine: `cat /proc/loadavg` is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DTYPES = ("float32", "bfloat16")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks its kernels on the first call)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(dtype: str, m: int, k: int, n: int, repeats: int = 5) -> float:
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
    return 2 * m * k * n / best_seconds(lambda: a @ b, repeats) / 1e9


def forward_tokens_per_s(model_dir: str, dtype: str, batch: int, length: int, repeats: int = 3) -> float:
    import torch

    from sdd.model.checkpoint import load_model

    model, _ = load_model(model_dir, dtype, "cpu")
    ids = torch.randint(100, model.config.vocab_size - 100, (batch, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        seconds = best_seconds(lambda: model(input_ids=ids, use_cache=False), repeats)
    return batch * length / seconds


def train_tokens_per_s(model_dir: str, dtype: str, batch: int, length: int, steps: int) -> float:
    """LoRA steps with fp32 master weights; bfloat16 = CPU autocast (what `finetune.precision: bf16` does)."""
    import torch

    from sdd.config import load_params
    from sdd.model import training as ft
    from sdd.model.checkpoint import load_model

    model, _ = load_model(model_dir, "float32", "cpu")
    model = ft.apply_method(model, load_params(REPO / "params.yaml").finetune, "lora")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(100, model.config.vocab_size - 100, (batch, length), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * length * steps / (time.perf_counter() - start)


def vllm_generation(model_dir: str, dtype: str, prompts: int, tokens: int) -> dict:
    """Runs in its own process (`--vllm-only`): one engine per dtype, shut down before the next."""
    from vllm import SamplingParams

    from sdd.config.engine import EngineParams
    from sdd.generate.engines import build_vllm, shutdown_vllm

    start = time.perf_counter()
    llm = build_vllm(model_dir, EngineParams(dtype=dtype, max_model_len=512), sequences=prompts)  # type: ignore[arg-type]
    ready = time.perf_counter()
    batch = [{"prompt_token_ids": [1000 + (7 * i + j) % 5000 for j in range(32)]} for i in range(prompts)]
    try:
        llm.generate(batch[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up
        began = time.perf_counter()
        outs = llm.generate(batch, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True), use_tqdm=False)
        seconds = time.perf_counter() - began
    finally:
        shutdown_vllm(llm)
    generated = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"engine_start_s": round(ready - start, 1), "tokens_per_s": round(generated / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/models/base")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--vllm-only", help=argparse.SUPPRESS)  # a dtype: the child process's job
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.vllm_only:
        print(json.dumps(vllm_generation(args.model, args.vllm_only, args.prompts, args.tokens)))
        return

    import torch

    from sdd.hardware import detect, precision_record, resolve_dtype, resolve_precision

    device = detect()
    auto = {
        "inference": resolve_dtype("auto", "inference"),
        "vllm": resolve_dtype("auto", "vllm"),
        "training": resolve_precision("auto"),
    }
    result: dict = {
        "device": precision_record("auto", auto["inference"], device)["device"],
        "auto": auto,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_before": loadavg(),
        "rows": [],
    }
    for dtype in args.dtypes:
        row: dict = {"dtype": dtype}
        row["matmul_small_gflops"] = round(matmul_gflops(dtype, 64, 576, 1536), 1)
        row["matmul_large_gflops"] = round(matmul_gflops(dtype, 1024, 1024, 1024, repeats=3), 1)
        row["forward_tokens_per_s"] = round(forward_tokens_per_s(args.model, dtype, args.batch, args.length), 1)
        row["train_tokens_per_s"] = round(
            train_tokens_per_s(args.model, dtype, args.batch, args.length, args.train_steps), 1
        )
        if not args.skip_vllm:
            cmd = [sys.executable, __file__, "--model", args.model, "--vllm-only", dtype]
            cmd += ["--prompts", str(args.prompts), "--tokens", str(args.tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if proc.returncode != 0:
                raise SystemExit(f"vLLM {dtype} failed:\n{proc.stderr[-3000:]}")
            row["vllm"] = json.loads(proc.stdout.strip().splitlines()[-1])
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    result["loadavg_after"] = loadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    dev = result["device"]
    print(
        f"\n{dev['name']} ({dev['kind']}), flags: {' '.join(dev['flags']) or '-'}, torch {torch.__version__} "
        f"({result['cpu_capability']}, {result['threads']} threads); auto -> {auto}"
    )
    print(f"loadavg before {result['loadavg_before']}, after {result['loadavg_after']}\n")
    print(
        "| dtype | matmul 64x576x1536 GFLOP/s | matmul 1024^3 GFLOP/s | forward tokens/s | training tokens/s "
        "| vLLM generation tokens/s | vLLM start s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        v = r.get("vllm", {})
        print(
            f"| {r['dtype']} | {r['matmul_small_gflops']} | {r['matmul_large_gflops']} | {r['forward_tokens_per_s']} "
            f"| {r['train_tokens_per_s']} | {v.get('tokens_per_s', '-')} | {v.get('engine_start_s', '-')} |"
        )


if __name__ == "__main__":
    main()
