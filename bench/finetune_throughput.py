"""Training throughput, padded vs padding-free batches (not a test; results go to BENCHMARKS.md).

    python bench/finetune_throughput.py --model data/models/pruned --steps 4

Same model, rows, order, LoRA settings and steps for both modes (the `finetune` section of
params.yaml, with `batching` switched); reports real (non-padding) tokens per second of training,
which is what an epoch costs. Padded batches also compute every pad position.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import datasets
import pandas as pd
from transformers import Trainer

from sdd.config import load_params
from sdd.data.examples import encode_rows
from sdd.model import training as ft
from sdd.model.checkpoint import load_model
from sdd.runtime import device


def run(model_dir: str, rows: list[dict], cfg, batching: str, steps: int, out: str) -> dict:
    cfg = cfg.model_copy(update={"batching": batching, "max_steps": steps, "eval_steps": 10**6, "save_steps": 10**6})
    model, tok = load_model(model_dir, "float32")
    examples, _ = encode_rows(rows, tok, cfg.max_seq_len, cfg.overlong)
    data = datasets.Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    args = ft.training_arguments(cfg, out, device())
    args = dataclasses.replace(args, eval_strategy="no", save_strategy="no")
    trainer = Trainer(
        model=ft.apply_method(model, cfg), args=args, train_dataset=data, data_collator=ft.collator(tok, batching)
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    real = trainer.state.num_input_tokens_seen  # non-padding tokens (padded: counted from the attention mask)
    return {
        "batching": batching,
        "steps": steps,
        "real_tokens": int(real),
        "seconds": round(seconds, 1),
        "tokens_per_second": round(real / seconds, 1),
        "bf16": args.bf16,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/models/pruned")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=".sdd-scratch/bench-finetune")
    args = parser.parse_args()
    params = load_params()
    rows = pd.concat([pd.read_parquet(params.paths.prepared_file(ds)) for ds in ("gsm8k", "alpaca")]).to_dict("records")
    results = [
        run(args.model, rows, params.finetune, mode, args.steps, args.out) for mode in ("padded", "padding_free")
    ]
    speedup = results[1]["tokens_per_second"] / results[0]["tokens_per_second"]
    print(json.dumps({"results": results, "padding_free_speedup": round(speedup, 2)}, indent=2))


if __name__ == "__main__":
    main()
