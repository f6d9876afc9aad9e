"""Remove a block of consecutive decoder layers, and count what that saves.

    check_block(num_layers=30, start=13, n_layers=6)     # clear ValueError for an impossible block
    removed = drop_layers(model, start=13, n_layers=6)   # in place; config and layer indices updated
    flops_per_token(model.config)                        # analytic forward FLOPs per token (LM head once)
    parameter_count(model.config)                        # unique parameters (a tied matrix once)

Pure model surgery and arithmetic; the stage loads and saves the checkpoint.
"""

from __future__ import annotations

import torch

from sdd.errors import InputError
from sdd.model.shapes import attention_shape, config_value, layer_matmul_shapes


def check_block(num_layers: int, start: int, n_layers: int) -> None:
    """Refuse a block that cannot be cut from a model with `num_layers` decoder layers."""
    if not 1 <= n_layers < num_layers:
        raise InputError(f"prune.n_layers={n_layers} but the model has {num_layers} layers; choose 1..{num_layers - 1}")
    if not 0 <= start < num_layers:
        raise InputError(
            f"prune.start={start} is out of range for a model with {num_layers} layers; "
            f"choose 0..{num_layers - n_layers} (or `auto`)"
        )
    if start + n_layers > num_layers:
        raise InputError(
            f"prune.start={start} with prune.n_layers={n_layers} would remove layers up to "
            f"{start + n_layers - 1}, past the last layer ({num_layers - 1}); "
            f"choose start 0..{num_layers - n_layers}"
        )


def decoder_of(model):
    """The model's decoder, which must keep its blocks in a `.layers` ModuleList (Llama, Qwen2/3,
    Mistral, Gemma 2/3, Phi-3 and most decoder-only models in transformers); anything else is named
    in a clear error rather than pruned into a broken checkpoint."""
    name = type(model).__name__
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        decoder = None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not hasattr(model.config, "num_hidden_layers"):
        raise InputError(
            f"cannot prune {name} (model_type {getattr(model.config, 'model_type', '?')!r}): its decoder does not keep "
            "its blocks in a `.layers` list with `num_hidden_layers` in the config, as Llama, Qwen2/3, Mistral, "
            "Gemma 2/3 and Phi-3 do; use one of those architectures, or extend sdd/model/pruning.py:decoder_of"
        )
    return decoder


def drop_layers(model, start: int, n_layers: int) -> list[int]:
    """Remove decoder layers [start, start + n_layers) in place; return their original indices.

    The layer list is renumbered (so saved weights are `layers.0..L-n-1`), `num_hidden_layers` and
    every per-layer config list (e.g. `layer_types`) shrink, and each attention module's
    `layer_idx` (its KV-cache slot) follows its new position.
    """
    decoder = decoder_of(model)
    num_layers = len(decoder.layers)
    check_block(num_layers, start, n_layers)
    removed = list(range(start, start + n_layers))
    kept = [layer for i, layer in enumerate(decoder.layers) if i not in removed]
    decoder.layers = torch.nn.ModuleList(kept)
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == num_layers and key != "architectures":
            setattr(config, key, [v for i, v in enumerate(value) if i not in removed])
    config.num_hidden_layers = len(kept)
    return removed


def layer_matmul_parameters(config) -> int:
    """Weights of one Llama-style decoder layer's linear maps (attention q/k/v/o, gated MLP
    gate/up/down): what a token is multiplied through. No biases, no norms."""
    return sum(i * o for i, o in layer_matmul_shapes(config).values())


def layer_parameters(config) -> int:
    """Parameters of one Llama-style decoder layer: the linear maps' weights, their biases where the
    config has them, and the two RMSNorms."""
    d, inter = config.hidden_size, config.intermediate_size
    heads, kv_heads, head_dim = attention_shape(config)
    biases = 0
    if config_value(config, "attention_bias", default=False):
        biases += heads * head_dim + 2 * kv_heads * head_dim + d
    if config_value(config, "mlp_bias", default=False):
        biases += 2 * inter + d
    return layer_matmul_parameters(config) + biases + 2 * d


def parameter_count(config) -> int:
    """Unique parameters of a Llama-style causal LM from its config: embedding, layers, final norm and
    the LM head, which adds a matrix only when it is not tied to the embedding (a tied matrix counts
    once, as `sum(p.numel() for p in model.parameters())` does)."""
    embedding = config.vocab_size * config.hidden_size
    head = 0 if config.tie_word_embeddings else embedding
    return embedding + config.num_hidden_layers * layer_parameters(config) + config.hidden_size + head


def flops_per_token(config, context: int = 0) -> int:
    """Forward matmul FLOPs per token: 2 N + 2 n_layer n_ctx d_attn (Kaplan et al. 2020, Table 1).

    N = every decoder layer's linear-map weights + the LM head (Kaplan's "De-embed", 2 d_model
    n_vocab). The input embedding is a lookup, not a matmul, so it adds nothing; a head tied to the
    embedding is one matmul, counted once. Norms, biases, activations and the softmax (O(d_model)
    per token) are left out, as in Kaplan's table. The context term (attention scores and weighted
    values over `context` earlier tokens) is 0 by default. SmolLM2-135M 30 -> 24 layers: 15.8% fewer
    FLOPs. The parameter reduction is `parameter_count`'s, a separate number: Llama-3.1-8B 32 -> 26
    layers is 8.03B -> 6.72B parameters, the paper's 16.3% (Thangarasa et al. 2024), and 17.4% fewer
    FLOPs by this count.
    """
    head = config.vocab_size * config.hidden_size
    matmul_params = config.num_hidden_layers * layer_matmul_parameters(config) + head
    heads, _, head_dim = attention_shape(config)
    return 2 * matmul_params + 2 * config.num_hidden_layers * context * heads * head_dim


def config_from_dict(raw: dict):
    """A transformers config object from a checkpoint's config.json contents (the model type's own
    defaults fill what the file leaves out, e.g. `tie_word_embeddings`)."""
    from transformers import AutoConfig

    if "model_type" not in raw:
        raise InputError("config.json has no model_type; it is not a Hugging Face model config")
    try:
        return AutoConfig.for_model(**raw)
    except ValueError as err:
        raise InputError(f"config.json has model_type {raw['model_type']!r}, which transformers does not know") from err


def reduction_pct(before: float, after: float) -> float:
    return round(100.0 * (before - after) / before, 2)
