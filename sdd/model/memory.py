"""Memory a stage needs, estimated from the model's config before any weight loads, and a clear
error when the devices it will run on cannot hold it.

    need = training_memory(config, method="lora", trainable=3.3e6, batch_tokens=8 * 512)
    check_fits(need, device_memory("cuda"), "finetune@sft", fixes=[...])

Estimates, not measurements: weights and optimizer state are exact byte counts for the dtypes the
stages use (the Trainer keeps fp32 master weights and AdamW's two fp32 moments per trainable
parameter); activations use the per-token, per-layer rule of Korthikanti et al. 2022 (~34 x hidden
bytes in bf16 without recomputation), which is an upper-side figure for LoRA. A run that the check
lets through can still fail on fragmentation; a run it stops would not have fit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sdd.errors import InputError
from sdd.model.pruning import layer_parameters, parameter_count
from sdd.model.shapes import kv_bytes_per_token, layer_matmul_shapes

GIB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def trainable_estimate(config, method: str, lora_rank: int, lora_targets: list[str], last_n: int) -> int:
    """Trainable parameters of a method, from the config: LoRA adds rank x (in + out) per targeted
    linear map per layer; last_layers trains n layers, the final norm and the LM head (the embedding
    too when tied); full trains everything."""
    if method == "full":
        return parameter_count(config)
    if method == "lora":
        shapes = layer_matmul_shapes(config)
        per_layer = sum(lora_rank * (i + o) for name, (i, o) in shapes.items() if name in lora_targets)
        return per_layer * config.num_hidden_layers
    d = config.hidden_size
    return last_n * layer_parameters(config) + d + config.vocab_size * d


def training_memory(config, method: str, trainable: int, batch_tokens: int, shards: int = 1) -> dict[str, int]:
    """Bytes per training process: fp32 weights, gradients and AdamW moments of the trainable
    parameters (all of them for `full`), activations of one batch. DDP: every process holds all of
    it (`shards` 1); FSDP splits weights, gradients and moments over `shards` processes (ZeRO-3,
    Rajbhandari et al. 2020), not the activations."""
    params = parameter_count(config)
    trained = params if method == "full" else trainable
    return {
        "weights (fp32)": 4 * params // shards,
        "gradients (fp32, trainable)": 4 * trained // shards,
        "AdamW moments (2 x fp32, trainable)": 8 * trained // shards,
        "activations (bf16, one batch)": 34 * config.hidden_size * config.num_hidden_layers * batch_tokens,
    }


def inference_memory(config, dtype: str, tokens_in_flight: int) -> dict[str, int]:
    """Bytes for generation: the weights and the KV cache of every sequence in flight."""
    return {
        f"weights ({dtype})": BYTES[dtype] * parameter_count(config),
        "KV cache": kv_bytes_per_token(config, BYTES[dtype]) * tokens_in_flight,
    }


def device_memory(device: str) -> int:
    """Memory of one device the stage runs on: one GPU (each process of a multi-GPU run has its
    own), or the machine's available RAM on CPU."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_fits(need: Mapping[str, int], have: int, what: str, fixes: list[str]) -> None:
    """Fail before compute when `need` exceeds `have`, with the breakdown and what to change."""
    total = sum(need.values())
    if total <= have:
        return
    parts = ", ".join(f"{k} {v / GIB:.1f} GiB" for k, v in need.items())
    raise InputError(
        f"{what} needs ~{total / GIB:.1f} GiB per device ({parts}) but the device has {have / GIB:.1f} GiB; "
        + "; ".join(fixes)
    )


def check_training(config: Any, arm: str, cfg: Any, method: str, dev: str) -> None:
    """Fail before loading anything when one training process of `arm` cannot fit on its device."""
    from sdd.config.finetune import sharded, world_size

    trainable = trainable_estimate(config, method, cfg.lora.rank, cfg.lora.target_modules, cfg.last_layers.n)
    shards = world_size(cfg) if sharded(cfg) else 1
    need = training_memory(config, method, trainable, cfg.batch_size * cfg.max_seq_len, shards)
    fixes = ["lower finetune.batch_size (raise grad_accum to keep the effective batch) or finetune.max_seq_len"]
    if method == "full" and not sharded(cfg):
        fixes += ["use finetune.method: lora, or shard it: finetune.accelerate_config: configs/accelerate/fsdp.yaml"]
    else:
        fixes += ["use more processes (FSDP shards the weights) or GPUs with more memory"]
    check_fits(need, device_memory(dev), f"finetune@{arm} ({method}, {dev})", fixes)


def read_config(model_dir: Any) -> Any:
    import json
    from pathlib import Path

    from sdd.model.pruning import config_from_dict

    return config_from_dict(json.loads((Path(model_dir) / "config.json").read_text()))


def check_engine(model_dir: Any, dtype: str, max_model_len: int, utilization: float, dev: str, key: str,
                 draft_dir: Any = None) -> None:  # fmt: skip
    """Fail before a vLLM engine starts when its weights (and a draft's) and the KV cache of one full
    `max_model_len` sequence (the least vLLM accepts) do not fit: on a GPU within `utilization` of its
    memory, on CPU within the available RAM. `key` is the params section the knobs live in."""
    config = read_config(model_dir)
    need = inference_memory(config, dtype, max_model_len)
    if draft_dir is not None:
        need |= {f"draft {k}": v for k, v in inference_memory(read_config(draft_dir), dtype, max_model_len).items()}
    have = int(device_memory(dev) * (utilization if dev == "cuda" else 1.0))
    fixes = [f"lower {key}.max_model_len (now {max_model_len})", f"or {key}.dtype (now {dtype})"]
    fixes += [f"raise {key}.gpu_memory_utilization or tensor_parallel_size (GPUs)" if dev == "cuda" else "or free RAM"]
    check_fits(need, have, f"the vLLM engine of {model_dir} ({dtype}, {dev})", fixes)


def check_evaluation(model_dir: Any, dtype: str, batch_size: int, shots: int, dev: str) -> None:
    """Fail before an evaluation (hf backend) loads its model when the weights and one batch of
    float32 log-probabilities over the vocabulary (lm-eval scores every position) cannot fit. The
    longest request is estimated as ~512 tokens per shot plus the question, at most the model's context."""
    config = read_config(model_dir)
    tokens = min(getattr(config, "max_position_embeddings", 4096) or 4096, 512 * (shots + 1))
    need = {
        f"weights ({dtype})": BYTES[dtype] * parameter_count(config),
        "log-probabilities of one batch (fp32)": 4 * batch_size * tokens * config.vocab_size,
    }
    fixes = [f"lower evaluate.batch_size (now {batch_size})", "or the shots", "or use evaluate.backend: vllm"]
    check_fits(need, device_memory(dev), f"evaluating {model_dir} ({dtype}, {dev}, ~{tokens} tokens a request)", fixes)
