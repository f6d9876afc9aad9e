"""The compute precision is chosen from the hardware (sdd/hardware.py): faked CPU flags and GPUs."""

from __future__ import annotations

import pytest

from sdd.hardware import Device, cpu_info, detect, env_caps, precision_record, resolve_dtype, resolve_precision

AVX2_EPYC = Device("cpu", "AMD EPYC 7B13", ("avx2", "fma", "f16c"))
AVX512_BF16 = Device("cpu", "AMD EPYC 9B14", ("avx512_bf16", "avx512f", "avx512_vnni", "avx2", "fma"))
AMX = Device("cpu", "Intel Xeon Platinum 8481C", ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"))
AVX512_NO_BF16 = Device("cpu", "Intel Xeon (Skylake)", ("avx512f", "avx2", "fma"))
A100 = Device("cuda", "NVIDIA A100-SXM4-80GB", cuda_bf16=True)
T4 = Device("cuda", "Tesla T4", cuda_bf16=False)


@pytest.mark.parametrize(
    "device, inference, vllm, training",
    [
        (AVX2_EPYC, "float32", "float32", "fp32"),
        (AVX512_NO_BF16, "float32", "float32", "fp32"),
        (AVX512_BF16, "bfloat16", "bfloat16", "bf16"),
        (AMX, "bfloat16", "bfloat16", "bf16"),
        (A100, "bfloat16", "bfloat16", "bf16"),
        (T4, "float16", "float16", "fp32"),
    ],
    ids=["avx2-only", "avx512-no-bf16", "avx512-bf16", "amx", "cuda-bf16", "cuda-no-bf16"],
)
def test_auto_follows_what_the_device_does_natively(device, inference, vllm, training):
    assert resolve_dtype("auto", "inference", device) == inference
    assert resolve_dtype("auto", "vllm", device) == vllm
    assert resolve_precision("auto", device) == training


@pytest.mark.parametrize("device", [AVX2_EPYC, AMX, A100, T4])
def test_an_explicit_value_always_wins(device):
    for dtype in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(dtype, "inference", device) == dtype
        assert resolve_dtype(dtype, "vllm", device) == dtype
    assert resolve_precision("bf16", device) == "bf16"
    assert resolve_precision("fp32", device) == "fp32"


def test_capping_torch_or_onednn_below_avx512_counts_as_no_native_bf16():
    caps = env_caps({"ATEN_CPU_CAPABILITY": "avx2"})
    assert caps == ("ATEN_CPU_CAPABILITY=avx2",)
    capped = Device("cpu", AMX.name, AMX.flags, caps)
    assert resolve_dtype("auto", "inference", capped) == "float32"
    assert env_caps({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == ("ONEDNN_MAX_CPU_ISA=AVX2",)
    # a cap at or above AVX-512 leaves bf16 alone
    assert env_caps({"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}) == ()


def test_cpuinfo_is_read_for_the_model_name_and_flags():
    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
        "flags\t\t: fpu sse2 avx avx2 fma f16c\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
        "flags\t\t: fpu sse2 avx avx2 fma f16c avx512_bf16\n"
    )
    name, flags = cpu_info(text)
    assert name == "AMD EPYC 7B13"
    assert flags == {"fpu", "sse2", "avx", "avx2", "fma", "f16c"}  # the first processor's line
    assert cpu_info("") == ("unknown CPU", set())


def test_this_machine_is_detected_and_recorded():
    device = detect()
    assert device.kind in ("cpu", "cuda") and device.name
    record = precision_record("auto", resolve_dtype("auto", "inference", device), device)
    assert record["requested"] == "auto"
    assert record["resolved"] in ("float32", "bfloat16", "float16")
    assert record["device"]["name"] == device.name
    assert record["device"]["native_bf16"] == device.native_bf16
    if device.kind == "cpu":
        assert record["resolved"] == ("bfloat16" if device.native_bf16 else "float32")
