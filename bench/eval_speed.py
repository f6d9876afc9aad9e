"""Wall time of evaluate@<model> on the demo suite (params.yaml evaluate.tasks): hf vs vllm backend.

    python bench/eval_speed.py --model base [--backends hf vllm] [--gpu-memory-utilization 0.05]

Runs `python -m stages.evaluate <model>` once per backend, each in its own process, in a scratch
folder: params.yaml is the repository's with `paths.models` pointing at the repository's models
and the outputs (metrics, per-sample records) redirected to the scratch folder, so nothing in the
repository changes. Reports wall time, the stage's average score and its fidelity KL per backend
(fidelity runs on HF in both, so the difference is lm-eval's backend). Needs the mirror
(SDD_DATA_MIRROR) and `dvc repro base_model` done.
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


def run(backend: str, model: str, args, scratch: Path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    work = scratch / backend
    work.mkdir(parents=True)
    params["paths"] = {**params["paths"], "models": str(REPO / params["paths"]["models"])}
    params["evaluate"]["backend"] = backend
    params["evaluate"]["vllm"] = {**params["evaluate"]["vllm"], "gpu_memory_utilization": args.gpu_memory_utilization}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "stages.evaluate", model], cwd=work, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"backend": backend, "error": proc.stderr[-2000:], "wall_s": round(wall, 1)}
    metrics = json.loads((work / params["paths"]["metrics"] / "evaluate" / f"{model}.json").read_text())
    return {
        "backend": backend,
        "wall_s": round(wall, 1),
        "average": round(metrics["average"], 4),
        "tasks": {t: round(v["score"], 4) for t, v in metrics["tasks"].items()},
        "items": sum(v["n"] for v in metrics["tasks"].values()),
        "kl": metrics["fidelity"]["kl"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="base", help="a name from evaluate.models")
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.05,
        help="vllm: on CPU the fraction of RAM for the KV cache (the machine is shared)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp:
        results = [run(b, args.model, args, Path(tmp)) for b in args.backends]
    print(
        json.dumps(
            {"machine": f"{platform.machine()} {os.cpu_count()} cpus", "model": args.model, "results": results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
