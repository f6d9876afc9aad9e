"""Benchmark of distill@gsm8k: vLLM engine vs hf engine vs vLLM's bare `LLM.generate`.

    SDD_DATA_MIRROR=/path/to/mirror python bench/distill_speed.py --rows 256 --hf-rows 64

Needs the base model (`dvc repro base_model`) and GSM8k through the mirror or the hub. Prepares
`--rows` GSM8k rows with the prepare stage in a temporary copy of the layout, then times
  1. the distill stage with engine=vllm (a subprocess, as dvc runs it) on all rows,
  2. the distill stage with engine=hf on the first `--hf-rows` rows (it is slow; tokens/s is the figure),
  3. bare vLLM: `LLM(...)` + one `LLM.generate` on the same prompts and sampling settings.
Targets: vLLM engine >= 3x the hf engine in generated tokens/s; stage overhead <= 15%
over bare vLLM. Writes a JSON of the figures (`--out`) and prints a Markdown table.
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

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def workdir(root: Path, params: dict, model: Path) -> Path:
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "data" / "models").mkdir(parents=True)
    (root / "data" / "models" / "base").symlink_to(model.resolve())
    return root


def run(root: Path, *module_args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *module_args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(module_args)} failed in {root}:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def stage(root: Path, params: dict, model: Path, prepared: Path, rows: int | None) -> dict:
    import pandas as pd

    root = workdir(root, params, model)
    (root / "data" / "prepared").mkdir(parents=True)
    df = pd.read_parquet(prepared)
    (df if rows is None else df.head(rows)).to_parquet(root / "data" / "prepared" / "gsm8k.parquet", index=False)
    wall = run(root, "stages.distill", "gsm8k")
    metrics = json.loads((root / "metrics" / "distill" / "gsm8k.json").read_text())
    return {**metrics, "process_wall_seconds": round(wall, 2)}


def bare_vllm(prepared: Path, model: Path, cfg) -> dict:
    """The same prompts through vLLM directly: the floor the stage's overhead is measured against."""
    import pandas as pd
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from sdd.data.prompts import build_messages, render, template_for
    from sdd.generate.engines import build_vllm, shutdown_vllm

    start = time.perf_counter()
    rows = pd.read_parquet(prepared).to_dict("records")
    tok = AutoTokenizer.from_pretrained(model)
    template = template_for("gsm8k")
    prompts = [
        {"prompt_token_ids": tok(render(tok, build_messages(r, template)), add_special_tokens=False).input_ids}
        for r in rows
    ]
    llm = build_vllm(model, cfg.engine_args)  # the stage's builder: the same engine settings
    ready = time.perf_counter()
    s = cfg.sampling
    try:
        outs = llm.generate(
            prompts, SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, n=s.n)
        )
        done = time.perf_counter()
    finally:
        shutdown_vllm(llm)  # left to interpreter exit, the engine's teardown hung the benchmark for minutes
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {
        "rows": len(rows),
        "generated_tokens": tokens,
        "engine_start_seconds": round(ready - start, 2),
        "generation_seconds": round(done - ready, 2),
        "generated_tokens_per_s": round(tokens / (done - ready), 2),
        "wall_seconds": round(done - start, 2),
    }


def matmul_peak_gflops(dtype: str, size: int = 2048, repeats: int = 10) -> float:
    """The machine's dense matmul rate at `dtype` with torch's threads (best of `repeats`): the
    compute roof for batched decoding, where every generated token is ~2 N FLOPs of GEMM."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def roofline(results: dict, model: Path, dtype: str) -> dict:
    """Generated tokens/s of each run as a fraction of the matmul roof (context term left out)."""
    from sdd.model.pruning import config_from_dict, flops_per_token

    per_token = flops_per_token(config_from_dict(json.loads((model / "config.json").read_text())))
    peak = matmul_peak_gflops(dtype)
    out = {
        "matmul_peak_gflops": round(peak, 1),
        "flops_per_token": per_token,
        "roof_tokens_per_s": round(peak * 1e9 / per_token),
    }
    for name in ("bare_vllm", "stage_vllm"):
        if name in results:
            out[f"{name}_fraction"] = round(results[name]["generated_tokens_per_s"] * per_token / (peak * 1e9), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256, help="GSM8k prompts for the vLLM runs (issue: >= 256)")
    ap.add_argument("--hf-rows", type=int, default=64, help="prompts for the (slow) hf engine run")
    ap.add_argument("--max-tokens", type=int, default=None, help="override distill.sampling.max_tokens")
    ap.add_argument(
        "--budget-ratio", default=None, help="override distill.budget_ratio ('none' = every row may use max_tokens)"
    )
    ap.add_argument("--model", type=Path, default=REPO / "data" / "models" / "base")
    ap.add_argument("--engines", default="bare,vllm,hf", help="comma-separated subset of bare,vllm,hf to run")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "distill_speed.json")
    args = ap.parse_args()
    engines = set(args.engines.split(","))

    from sdd.config import Params

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["datasets"]["gsm8k"]["limit"] = args.rows
    if args.max_tokens:
        base["distill"]["sampling"]["max_tokens"] = args.max_tokens
    if args.budget_ratio is not None:
        base["distill"]["budget_ratio"] = None if args.budget_ratio == "none" else float(args.budget_ratio)
    cfg = Params.model_validate(base).distill
    results = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "rows": args.rows,
        "hf_rows": args.hf_rows,
        "params": cfg.model_dump(),
        "command": " ".join(sys.argv),
    }
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        tmp = Path(tmp)
        prep = workdir(tmp / "prepare", base, args.model)
        run(prep, "stages.prepare", "gsm8k")
        prepared = prep / "data" / "prepared" / "gsm8k.parquet"
        print(f"prepared {args.rows} GSM8k rows", file=sys.stderr)
        if "bare" in engines:
            results["bare_vllm"] = bare_vllm(prepared, args.model, cfg)
            print("bare vLLM:", results["bare_vllm"], file=sys.stderr)
        if "vllm" in engines:
            results["stage_vllm"] = stage(
                tmp / "vllm", {**base, "distill": {**base["distill"], "engine": "vllm"}}, args.model, prepared, None
            )
            print("stage vLLM:", results["stage_vllm"], file=sys.stderr)
        if "hf" in engines:
            results["stage_hf"] = stage(
                tmp / "hf", {**base, "distill": {**base["distill"], "engine": "hf"}}, args.model, prepared, args.hf_rows
            )
            print("stage hf:", results["stage_hf"], file=sys.stderr)
    v, h, b = results.get("stage_vllm"), results.get("stage_hf"), results.get("bare_vllm")
    if v and h:
        results["vllm_over_hf_tokens_per_s"] = round(v["generated_tokens_per_s"] / h["generated_tokens_per_s"], 2)
    results["roofline"] = roofline(results, args.model, cfg.engine_args.dtype)
    if v and b:
        results["stage_over_bare_tokens_per_s"] = round(v["generated_tokens_per_s"] / b["generated_tokens_per_s"], 3)
        results["stage_overhead_generation"] = round(v["generation_seconds"] / b["generation_seconds"] - 1, 4)
        results["stage_overhead_wall"] = round(v["process_wall_seconds"] / b["wall_seconds"] - 1, 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| run | rows | generated tokens | start s | generate s | tokens/s | wall s |\n|---|---|---|---|---|---|---|")
    for name, r, wall in (
        ("bare vLLM LLM.generate", b, "wall_seconds"),
        ("stage, engine=vllm", v, "process_wall_seconds"),
        ("stage, engine=hf", h, "process_wall_seconds"),
    ):
        if r:
            print(
                f"| {name} | {r['rows']} | {r['generated_tokens']} | {r['engine_start_seconds']} | "
                f"{r['generation_seconds']} | {r['generated_tokens_per_s']} | {r[wall]:.1f} |"
            )
    for key in (
        "vllm_over_hf_tokens_per_s",
        "stage_over_bare_tokens_per_s",
        "stage_overhead_generation",
        "stage_overhead_wall",
        "roofline",
    ):
        if key in results:
            print(f"{key}: {results[key]}")


if __name__ == "__main__":
    main()
