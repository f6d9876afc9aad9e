"""Shapes of a Llama-style decoder from its config, without loading weights or torch: attention
heads, the linear maps of a layer, the KV cache per token. Pruning, the memory check and the vLLM
engines' cache sizing all count from here.

    heads, kv_heads, head_dim = attention_shape(config)      # any object with the config's attributes
    layer_matmul_shapes(config)["k_proj"]                    # (in, out) features
    kv_bytes_per_token(config, dtype_bytes=2)
"""

from __future__ import annotations


def config_value(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def attention_shape(config) -> tuple[int, int, int]:
    heads = config.num_attention_heads
    kv_heads = config_value(config, "num_key_value_heads", default=heads)
    head_dim = config_value(config, "head_dim", default=config.hidden_size // heads)
    return heads, kv_heads, head_dim


def layer_matmul_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear map of one Llama-style decoder layer, by module name."""
    d, inter = config.hidden_size, config.intermediate_size
    heads, kv_heads, head_dim = attention_shape(config)
    q, kv = heads * head_dim, kv_heads * head_dim
    return {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, inter),
        "up_proj": (d, inter),
        "down_proj": (inter, d),
    }


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """Keys and values of one token over every layer: 2 x layers x KV heads x head dim x bytes."""
    _, kv_heads, head_dim = attention_shape(config)
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
