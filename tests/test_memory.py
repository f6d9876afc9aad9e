"""Memory sanity before compute: the trainable-parameter estimate matches what peft / the
last-layers method really train, and a run that cannot fit fails with the breakdown and the fix."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from bench.gpu_hours import LLAMA31_8B
from sdd.config.finetune import FinetuneParams
from sdd.errors import InputError
from sdd.model import memory
from sdd.model import training as ft

from conftest import build_llama

LLAMA31_8B_PRUNED = LlamaConfig(**{**LLAMA31_8B.to_dict(), "num_hidden_layers": 26})  # the paper's 32 -> 26


@pytest.mark.parametrize("method", ["lora", "last_layers", "full"])
def test_trainable_estimate_is_what_the_method_trains(tokenizer, method):
    cfg = FinetuneParams()
    model = ft.apply_method(build_llama(tokenizer, num_layers=4), cfg, method)
    real = ft.trainable_summary(model)["trainable_parameters"]
    estimate = memory.trainable_estimate(
        model.config, method, cfg.lora.rank, cfg.lora.target_modules, cfg.last_layers.n
    )
    assert estimate == real


def test_full_fine_tuning_of_a_pruned_8b_does_not_fit_one_80gb_gpu_but_lora_does():
    gpu = 80 * 10**9
    lora = memory.trainable_estimate(LLAMA31_8B_PRUNED, "lora", 16, FinetuneParams().lora.target_modules, 3)
    fits = memory.training_memory(LLAMA31_8B_PRUNED, "lora", lora, batch_tokens=2 * 4096)
    memory.check_fits(fits, gpu, "finetune@sdd", ["x"])  # no error
    full = memory.training_memory(LLAMA31_8B_PRUNED, "full", 0, batch_tokens=2 * 4096)
    params = memory.parameter_count(LLAMA31_8B_PRUNED)
    assert 6.6e9 < params < 6.8e9 and full["AdamW moments (2 x fp32, trainable)"] == 8 * params
    with pytest.raises(
        InputError,
        match=r"finetune@sdd \(full\) needs ~\d+\.\d GiB per device \(weights \(fp32\) .* use finetune.method: lora",
    ):
        memory.check_fits(full, gpu, "finetune@sdd (full)", ["use finetune.method: lora"])
    sharded = memory.training_memory(LLAMA31_8B_PRUNED, "full", 0, batch_tokens=2 * 4096, shards=8)
    assert sharded["AdamW moments (2 x fp32, trainable)"] == 8 * params // 8  # FSDP over 8 GPUs: it fits
    memory.check_fits(sharded, gpu, "finetune@sdd (full, fsdp)", ["x"])


def test_inference_memory_counts_weights_and_the_kv_cache():
    need = memory.inference_memory(LLAMA31_8B_PRUNED, "bfloat16", tokens_in_flight=1000)
    assert need["KV cache"] == 2 * 26 * 8 * 128 * 2 * 1000
    assert need["weights (bfloat16)"] == 2 * memory.parameter_count(LLAMA31_8B_PRUNED)
