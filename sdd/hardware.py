"""The compute precision from what the device does natively, resolved in one place.

    from sdd.hardware import resolve_dtype, resolve_precision, precision_record
    dtype = resolve_dtype(params.evaluate.dtype, "inference")   # "auto" -> "float32" on an AVX2-only CPU
    record = precision_record(params.evaluate.dtype, dtype)     # what the stage writes beside its numbers

Every compute dtype in params.yaml (`layer_scores.dtype`, `distill.engine_args.dtype`,
`teacher_logits.dtype`, `evaluate.dtype`, `speculate.engine_args.dtype`) and `finetune.precision`
default to `auto`, which this module turns into a concrete dtype:

- CUDA: bfloat16 where the GPU supports it (Ampere and newer); otherwise float16 for inference
  and vLLM, float32 for training (fp16 training needs loss scaling, which the recipes do not use).
- CPU: bfloat16 only where the CPU computes it natively (the `amx_bf16` or `avx512_bf16` flags);
  float32 otherwise. Measured on a 2-core AVX2-only AMD EPYC: a bf16 matmul runs at 0.6 GFLOP/s
  against 23.6 in float32, vLLM generates 20-30 tokens/s in bf16 against 126-230 (BENCHMARKS.md).
  torch's `ATEN_CPU_CAPABILITY` and oneDNN's `ONEDNN_MAX_CPU_ISA` below AVX-512 cap what the
  process uses, so they count as "no native bf16" too.

An explicit value in params always wins. Storage dtypes (`base_model.dtype`, `finetune.save_dtype`,
`merge.dtype`) are not compute dtypes and are never resolved here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Use = Literal["inference", "vllm", "training"]
# The CPU flags that mean native bfloat16 arithmetic (Linux /proc/cpuinfo names).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# The flags recorded beside every resolution: the ones that decide it and the vector ISA level.
ISA_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx512_vnni", "avx2", "fma", "f16c")
# Environment caps below AVX-512 (torch's dispatch level; oneDNN's ISA ceiling): bf16 then runs emulated.
SLOW_CAPS = {"ATEN_CPU_CAPABILITY": ("default", "avx2"), "ONEDNN_MAX_CPU_ISA": ("sse41", "avx", "avx2")}


@dataclass(frozen=True)
class Device:
    """What the precision is chosen from: the device kind, its name and its capabilities."""

    kind: Literal["cpu", "cuda"]
    name: str  # CPU model name or GPU name
    flags: tuple[str, ...] = ()  # CPU: the ISA flags of ISA_FLAGS present
    caps: tuple[str, ...] = ()  # CPU: environment caps in force (e.g. "ATEN_CPU_CAPABILITY=avx2")
    cuda_bf16: bool = False  # CUDA: the GPU supports bfloat16

    @property
    def native_bf16(self) -> bool:
        if self.kind == "cuda":
            return self.cuda_bf16
        return any(f in self.flags for f in BF16_FLAGS) and not self.caps


def cpu_info(cpuinfo: str) -> tuple[str, set[str]]:
    """The model name and the flag set of the first processor in /proc/cpuinfo text."""
    name, flags = "unknown CPU", set[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "unknown CPU":
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def env_caps(environ: dict[str, str]) -> tuple[str, ...]:
    """The environment settings that keep torch/oneDNN off the AVX-512 (and so the bf16) paths."""
    return tuple(
        f"{var}={environ[var]}" for var, slow in SLOW_CAPS.items() if environ.get(var, "").strip().lower() in slow
    )


@functools.cache
def detect() -> Device:
    """This process's device: the first CUDA GPU when torch sees one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return Device("cuda", torch.cuda.get_device_name(0), cuda_bf16=bool(torch.cuda.is_bf16_supported()))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so no native bf16 is assumed
        text = ""
    name, flags = cpu_info(text)
    return Device("cpu", name, tuple(f for f in ISA_FLAGS if f in flags), env_caps(dict(os.environ)))


def resolve_dtype(requested: str, use: Use, device: Device | None = None) -> str:
    """The dtype a stage computes in: `requested` unless it is `auto`, else what `device` does
    natively for this use (module docstring)."""
    if requested != "auto":
        return requested
    device = device or detect()
    if device.native_bf16:
        return "bfloat16"
    if device.kind == "cuda" and use != "training":
        return "float16"
    return "float32"


def resolve_precision(requested: str, device: Device | None = None) -> str:
    """`finetune.precision` (auto | bf16 | fp32) -> bf16 or fp32: the training autocast."""
    if requested != "auto":
        return requested
    return "bf16" if resolve_dtype("auto", "training", device) == "bfloat16" else "fp32"


def precision_record(requested: str, resolved: str, device: Device | None = None) -> dict:
    """What a stage writes into its detail metrics: the requested and resolved precision and the
    device that decided it (so two machines' artifacts can be told apart)."""
    device = device or detect()
    return {
        "requested": requested,
        "resolved": resolved,
        "device": asdict(device) | {"native_bf16": device.native_bf16},
    }
