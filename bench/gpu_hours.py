"""GPU-hours estimate per stage of the paper preset (not a test; the table goes to the README).

    python bench/gpu_hours.py --distilled <run>/data/distilled      # token counts from a finished run

FLOPs from the formulas the project already uses (sdd/model/pruning.py: forward 2 x matmul weights
per token, plus attention at the stated context), tokens per row measured on this project's own
distillation outputs (SmolLM2 tokenizer: Llama-3's 128k vocabulary needs ~10-20% fewer tokens for
English, so these are upper-side counts), rows from the preset, and a stated model FLOPs
utilisation (MFU) per kind of work on an H100 SXM (989 TFLOP/s dense bf16). Nothing here was run on
a GPU: the MFU values are assumptions (typical published vLLM / FSDP-LoRA figures), stated in the
table so anyone can rescale it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from transformers import LlamaConfig

from sdd.model import pruning

# meta-llama/Llama-3.1-8B-Instruct config.json (public values, typed here: nothing is downloaded)
LLAMA31_8B = LlamaConfig(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
)
PEAK = 989e12  # H100 SXM dense bf16 FLOP/s
MFU = {"inference": 0.25, "training": 0.40}
# preset rows; tokens per row for Dolly / OpenMathInstruct-2 are assumed from the measured
# Alpaca / GSM8k ones (x1.5: longer answers), stated in the output
ROWS = {"gsm8k": 7473, "alpaca": 52002, "dolly": 15011, "openmath": 50000}
LIKE = {"gsm8k": ("gsm8k", 1.0), "alpaca": ("alpaca", 1.0), "dolly": ("alpaca", 1.5), "openmath": ("gsm8k", 1.5)}


def per_row_tokens(distilled: Path) -> dict[str, dict[str, float]]:
    """Mean prompt (distillation prompt), generated and training-text tokens per row, measured."""
    out = {}
    for ds in ("gsm8k", "alpaca"):
        df = pd.read_parquet(distilled / f"{ds}.parquet")
        response = df["response_original"].str.len().mean() / df["response_distilled"].str.len().mean()
        out[ds] = {
            "prompt": float(df["prompt_tokens"].mean()),
            "generated": float(df["generated_tokens"].mean()),
            # training text ~ the instruction (prompt minus template and reference) + the response
            "train": float(df["prompt_tokens"].mean() * 0.5 + df["generated_tokens"].mean() * response),
        }
    return out


def hours(flops: float, kind: str) -> float:
    return flops / (PEAK * MFU[kind]) / 3600


def table(tokens: dict[str, dict[str, float]]) -> list[tuple[str, str, float, float]]:
    base = pruning.flops_per_token(LLAMA31_8B, 0)
    pruned_cfg = LlamaConfig(**{**LLAMA31_8B.to_dict(), "num_hidden_layers": 26})
    pruned = pruning.flops_per_token(pruned_cfg, 0)
    per_ds = {ds: {k: v * LIKE[ds][1] for k, v in tokens[LIKE[ds][0]].items()} for ds in ROWS}
    prompt = sum(ROWS[d] * per_ds[d]["prompt"] for d in ROWS)
    generated = sum(ROWS[d] * per_ds[d]["generated"] for d in ROWS)
    train = sum(ROWS[d] * per_ds[d]["train"] for d in ROWS)
    rows = [
        ("distill (4 datasets, prefill + decode, base)", "2N (prompt + generated)", prompt + generated, base),
        ("teacher_logits (original + distilled text)", "2N", 2 * train, base),
        ("layer_scores (256 samples, 8 KL passes)", "2N x 9", 9 * 256 * 2048, base),
        ("finetune LoRA, sft / sdd / kd / kd_sdd (each)", "~4N (no weight grads)", 2 * train, pruned),
        ("finetune LoRA, sdd_gsm8k + sdd_alpaca (merge inputs)", "~4N", 2 * train, pruned),
        ("finetune full (one arm, alternative)", "6N", 3 * train, pruned),
        ("evaluate, full leaderboard suite (per model, ~85M tokens)", "2N", 85e6, base),
    ]
    out = []
    for name, formula, count, flops_per_token in rows:
        flops = count * flops_per_token
        kind = "training" if name.startswith("finetune") else "inference"
        out.append((name, formula, count, hours(flops, kind)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distilled", default="data/distilled")
    args = parser.parse_args()
    tokens = per_row_tokens(Path(args.distilled))
    print(f"measured tokens per row (SmolLM2 tokenizer): {tokens}")
    print(f"assumptions: H100 SXM {PEAK / 1e12:.0f} TFLOP/s bf16, MFU {MFU}, rows {ROWS}, Dolly/OpenMath like {LIKE}")
    print("| stage | FLOPs per token | token-passes (x 2N of its model) | GPU-hours (H100) |\n|---|---|---|---|")
    rows = table(tokens)
    for name, formula, count, h in rows:
        print(f"| {name} | {formula} | {count / 1e6:,.1f}M | {h:.2f} |")
    h = {name.split(" ")[0] + str(i): v for i, (name, _, _, v) in enumerate(rows)}
    values = list(h.values())
    # the preset: distill, teacher, layer_scores, 4 LoRA arms, the merge inputs, 7 evaluated models
    total = values[0] + values[1] + values[2] + 4 * values[3] + values[4] + 7 * values[6]
    print(f"| **the preset, LoRA (4 arms + merge inputs, 7 models evaluated)** | | | **{total:.1f}** |")


if __name__ == "__main__":
    main()
