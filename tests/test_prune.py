"""Pruning: the saved checkpoint computes exactly what the original computes with the block skipped,
its config and weight names follow the cut, the parameter count reproduces the paper's Llama-3.1-8B
figures and the forward-FLOPs count SmolLM2's, impossible blocks fail clearly, and vLLM loads and runs
the result."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_layer_scores import make_project
from transformers import LlamaConfig

from sdd.model import pruning
from sdd.model.checkpoint import load_model, save_model
from stages import layer_scores, prune

from conftest import build_llama

LLAMA_31_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=False,
)
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
)


def skipped_logits(model, ids: torch.Tensor, mask: torch.Tensor, skip: range) -> torch.Tensor:
    """The original model's logits with layers in `skip` turned into the identity by forward hooks."""

    def identity(module, args, kwargs, output):
        return args[0] if args else kwargs["hidden_states"]

    handles = [model.model.layers[i].register_forward_hook(identity, with_kwargs=True) for i in skip]
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()


def test_pruned_checkpoint_equals_the_original_with_the_block_skipped(tokenizer, tmp_path):
    model = build_llama(tokenizer, num_layers=6, seed=4)
    pruned = copy.deepcopy(model)
    assert pruning.drop_layers(pruned, start=2, n_layers=3) == [2, 3, 4]
    save_model(pruned, tokenizer, tmp_path / "pruned", "float32")
    reloaded, tok = load_model(tmp_path / "pruned")
    assert tok.chat_template == tokenizer.chat_template
    batch = tokenizer(["Natalia sold clips to 48 friends", "The sea"], return_tensors="pt", padding=True)
    with torch.no_grad():
        got = reloaded(**batch).logits
    expected = skipped_logits(model, batch["input_ids"], batch["attention_mask"], range(2, 5))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    config = json.loads((tmp_path / "pruned/config.json").read_text())
    assert config["num_hidden_layers"] == 3
    with safe_open(tmp_path / "pruned/model.safetensors", "pt") as fh:
        layers = {int(k.split(".")[2]) for k in fh.keys() if k.startswith("model.layers.")}
    assert layers == {0, 1, 2}
    assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == [0, 1, 2]


def test_per_layer_config_lists_follow_the_cut(tokenizer):
    model = build_llama(tokenizer, num_layers=6)
    model.config.layer_types = [f"type{i}" for i in range(6)]
    pruning.drop_layers(model, start=1, n_layers=2)
    assert model.config.layer_types == ["type0", "type3", "type4", "type5"]


def test_the_papers_16_3_percent_is_its_parameter_reduction():
    # Llama-3.1-8B, untied: a layer has 218,103,808 matmul weights (q, o: 4096^2 each; k, v: 4096 x
    # 1024 each; MLP 3 x 4096 x 14336) + 8,192 norm weights; embedding and LM head 525,336,576 each.
    before = LlamaConfig(**LLAMA_31_8B)  # config only: no weights are allocated
    after = LlamaConfig(**{**LLAMA_31_8B, "num_hidden_layers": 26})
    assert pruning.parameter_count(before) == 8_030_261_248 and pruning.parameter_count(after) == 6_721_589_248
    assert pruning.reduction_pct(pruning.parameter_count(before), pruning.parameter_count(after)) == 16.3
    # Forward FLOPs: 6 x 218,103,808 / (32 x 218,103,808 + 525,336,576) = 17.44%, not the paper's figure.
    assert pruning.flops_per_token(before) == 2 * 7_504_658_432
    assert pruning.reduction_pct(pruning.flops_per_token(before), pruning.flops_per_token(after)) == 17.44
    # the context term adds attention cost per layer, so cutting layers saves a larger share
    assert pruning.reduction_pct(pruning.flops_per_token(before, 8192), pruning.flops_per_token(after, 8192)) > 17.44


def test_forward_flops_count_the_tied_head_once_and_not_the_embedding():
    # SmolLM2-135M, tied: a layer has 3,538,944 matmul weights (q, o: 576^2; k, v: 576 x 192; MLP
    # 3 x 576 x 1536) + 1,152 norm weights; the shared embedding / LM head 28,311,552.
    before = LlamaConfig(**SMOLLM2_135M)
    after = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": 24})
    assert pruning.flops_per_token(before) == 2 * (30 * 3_538_944 + 28_311_552) == 268_959_744
    assert pruning.flops_per_token(after) == 2 * (24 * 3_538_944 + 28_311_552) == 226_492_416
    assert pruning.reduction_pct(pruning.flops_per_token(before), pruning.flops_per_token(after)) == 15.79
    # Unique parameters: the tied matrix once, plus the final norm; BENCHMARKS' exact count of the model.
    assert pruning.parameter_count(before) == 134_515_008 and pruning.parameter_count(after) == 113_274_432
    assert pruning.reduction_pct(pruning.parameter_count(before), pruning.parameter_count(after)) == 15.79
    # Untying the head adds its matrix to the parameters but not to the FLOPs: the embedding is a lookup.
    untied = LlamaConfig(**{**SMOLLM2_135M, "tie_word_embeddings": False})
    assert pruning.parameter_count(untied) - pruning.parameter_count(before) == 28_311_552
    assert pruning.flops_per_token(untied) == pruning.flops_per_token(before)


def test_config_from_dict_uses_the_model_types_defaults():
    raw = json.loads(LlamaConfig(**SMOLLM2_135M).to_json_string())
    assert pruning.parameter_count(pruning.config_from_dict(raw)) == 134_515_008
    with pytest.raises(ValueError, match="no model_type"):
        pruning.config_from_dict({"hidden_size": 8})


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_formula_matches_an_exact_count(tokenizer, tied):
    model = build_llama(tokenizer, num_layers=5, hidden=128)
    if tied:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    exact = sum(p.numel() for p in model.parameters())
    assert pruning.parameter_count(model.config) == exact
    pruning.drop_layers(model, 1, 2)
    assert pruning.parameter_count(model.config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "start, n, message",
    [
        (0, 6, r"prune.n_layers=6 but the model has 6 layers; choose 1..5"),
        (6, 2, r"prune.start=6 is out of range .* choose 0..4"),
        (4, 3, r"would remove layers up to 6, past the last layer \(5\); choose start 0..3"),
    ],
)
def test_impossible_blocks_fail_clearly(start, n, message):
    with pytest.raises(ValueError, match=message):
        pruning.check_block(6, start, n)


def test_stage_prunes_the_best_block_and_reports_the_savings(tmp_path, monkeypatch):
    make_project(tmp_path, monkeypatch)
    layer_scores.main([])
    best = json.loads(Path("metrics/layer_scores/scores.json").read_text())["best_start"]["2"]
    prune.main([])
    metrics = json.loads(Path("metrics/prune/prune.json").read_text())
    assert metrics["removed_layers"] == [best, best + 1] and metrics["start"] == best and metrics["n_layers"] == 2
    model, _ = load_model("data/models/pruned")
    assert model.config.num_hidden_layers == 6
    assert metrics["parameters_after"] == sum(p.numel() for p in model.parameters())
    per_layer = pruning.layer_parameters(model.config)
    assert metrics["parameters_before"] - metrics["parameters_after"] == 2 * per_layer
    matmul = pruning.layer_matmul_parameters(model.config)  # the norms are not matmuls
    assert metrics["flops_per_token_before"] - metrics["flops_per_token_after"] == 2 * 2 * matmul
    assert metrics["flops_context"] == 0
    for key in ("flops_reduction_pct", "params_reduction_pct"):
        assert 0 < metrics[key] < 100


def test_stage_rejects_a_block_past_the_last_layer(tmp_path, monkeypatch):
    make_project(tmp_path, monkeypatch, prune__start=7)
    with pytest.raises(ValueError, match=r"prune.start=7 with prune.n_layers=2 would remove layers up to 8"):
        prune.main([])


VLLM_SCRIPT = textwrap.dedent("""
    import sys
    from vllm import LLM, SamplingParams

    if __name__ == "__main__":
        llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=128,
                  gpu_memory_utilization=0.02, seed=0)
        out = llm.generate(["The sea"], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
        print("GENERATED_TOKENS", len(out[0].outputs[0].token_ids))
""")


@pytest.mark.slow
def test_vllm_loads_and_runs_the_pruned_checkpoint(tmp_path, monkeypatch):
    make_project(tmp_path, monkeypatch, prune__start=3)
    prune.main([])
    script = tmp_path / "run_vllm.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data/models/pruned")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GENERATED_TOKENS 8" in proc.stdout
