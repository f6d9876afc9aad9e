"""The architectures users bring: tiny random Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 and
Phi-3 models (built here) go through layer scores -> prune (per-layer config lists re-indexed) ->
reload in transformers -> one LoRA step -> SLERP merge. vLLM loading is in the slow test."""

from __future__ import annotations

import json

import pytest
import torch

from sdd.config.finetune import FinetuneParams
from sdd.config.merge import SlerpRecipe
from sdd.errors import InputError
from sdd.model import layer_scores, merging, pruning
from sdd.model import training as ft
from sdd.model.checkpoint import load_model, save_model

from conftest import CORPUS

ARCHITECTURES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),  # q/k/v biases
    "qwen3": ("Qwen3Config", {"tie_word_embeddings": True, "head_dim": 16}),  # q/k norms
    "mistral": ("MistralConfig", {"sliding_window": 32}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "sliding_window": 32}),  # layer_types: sliding/full alternate
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 32}),
    "phi3": ("Phi3Config", {}),  # fused qkv_proj and gate_up_proj
}
LAYERS, START, CUT = 6, 2, 2


def build(arch: str, tokenizer, seed: int = 0):
    import transformers

    name, extra = ARCHITECTURES[arch]
    config = getattr(transformers, name)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def per_layer_lists(config) -> dict[str, list]:
    return {k: v for k, v in config.to_dict().items() if isinstance(v, list) and len(v) == config.num_hidden_layers}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_scores_prune_reload_train_and_merge(arch, tokenizer, tmp_path):
    model = build(arch, tokenizer)
    before = per_layer_lists(model.config)
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in CORPUS]
    batches = layer_scores.make_batches(ids, [len(s) - 1 for s in ids], tokenizer.pad_token_id, batch_size=2)
    with torch.no_grad():
        states = [layer_scores.residual_stream(model, b) for b in batches]
    table = layer_scores.proxy_table(states, batches, max_n=CUT)
    assert torch.isfinite(table["angular_last_token"][CUT - 1, : LAYERS - CUT + 1]).all()

    removed = pruning.drop_layers(model, START, CUT)
    assert removed == [2, 3] and model.config.num_hidden_layers == LAYERS - CUT
    for key, values in before.items():  # e.g. Gemma's layer_types: the removed layers' entries go
        assert getattr(model.config, key) == values[:START] + values[START + CUT :], key
    pruned = tmp_path / "pruned"
    save_model(model, tokenizer, pruned, "float32")
    reloaded, _ = load_model(pruned)
    probe = torch.tensor([ids[0]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(probe).logits, model(probe).logits, atol=1e-5, rtol=1e-5)
    assert json.loads((pruned / "config.json").read_text())["num_hidden_layers"] == LAYERS - CUT

    cfg = FinetuneParams()  # the default LoRA targets (q/k/v/o, gate/up/down); Phi-3 fuses them
    if arch == "phi3":
        lora = cfg.lora.model_copy(update={"target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]})
        cfg = cfg.model_copy(update={"lora": lora})
    trained = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        lora = ft.apply_method(load_model(pruned)[0], cfg).train()
        optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
        batch = torch.tensor([ids[seed]])
        loss = lora(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        out = tmp_path / f"trained{seed}"
        save_model(lora.merge_and_unload(), tokenizer, out, "float32")
        trained.append(out)
    merged = tmp_path / "merged"
    infos = {str(p): merging.describe(p) for p in trained}
    merging.check_compatible(infos)
    merging.merge(
        merging.mergekit_config(
            SlerpRecipe(method="slerp", models=["finetuned/a", "finetuned/b"], t=0.5), trained, None, "float32"
        ),
        merged,
    )
    model_merged, _ = load_model(merged)
    assert model_merged.config.num_hidden_layers == LAYERS - CUT
    with torch.no_grad():
        assert torch.isfinite(model_merged(probe).logits).all()


def test_an_architecture_without_a_decoder_layer_list_is_a_clear_error(tokenizer):
    import transformers

    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=4, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match=r"cannot prune GPT2LMHeadModel \(model_type 'gpt2'\).*`\.layers` list"):
        pruning.drop_layers(model, 1, 1)
    assert model.config.n_layer == 4 and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
