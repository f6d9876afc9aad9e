"""Model merging through mergekit used as a library: recipe checks, mergekit config, the merge.

    from sdd.merging import check_compatible, describe, merge
    check_compatible({"a": describe(dir_a), "b": describe(dir_b)})   # reads configs/tokenizers only
    merge(recipe, {"a": dir_a, "b": dir_b}, base=None, out=out_dir, dtype="bfloat16")

Methods (a registry: params choose among three), all implemented by mergekit:
- `slerp` (Shoemake 1985, "Animating rotation with quaternion curves"; mergekit
  `merge_methods/slerp.py`): per tensor, spherical interpolation between the first model
  (t=0) and the second (t=1); near-collinear tensors fall back to linear interpolation.
- `linear` (Wortsman et al. 2022, "Model soups"): weighted average of the models.
- `ties` (Yadav et al. 2023, "TIES-Merging", arXiv:2306.01708): task vectors (model - base)
  trimmed to the top `density` fraction by magnitude, sign consensus, disjoint mean, added back
  to `base`, the common ancestor of the models (e.g. the pruned model both arms started from).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """A merge method: its mergekit name, allowed params with defaults, and input contract."""

    mergekit_name: str
    defaults: dict = field(default_factory=dict)
    per_model: tuple[str, ...] = ()   # params given as one value per model (a list)
    max_models: int | None = None
    needs_base: bool = False


METHODS = {
    "slerp": Method("slerp", {"t": 0.5}, max_models=2),
    "linear": Method("linear", {"weight": None, "normalize": True}, per_model=("weight",)),
    "ties": Method("ties", {"weight": None, "density": 0.5, "normalize": True}, per_model=("weight", "density"),
                   needs_base=True),
}


def check_recipe(method: str, models: list[str], base: str | None, params: dict) -> dict:
    """Validate a recipe's method and params before anything loads; return params with defaults.

    Raises ValueError naming the offending key and the allowed values.
    """
    from sdd.params import did_you_mean

    if method not in METHODS:
        raise ValueError(f"method {method!r}{did_you_mean(method, METHODS)} is not supported; choose one of {sorted(METHODS)}")
    spec = METHODS[method]
    if len(models) < 2:
        raise ValueError(f"a merge needs at least 2 models, got {len(models)} ({models})")
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise ValueError(f"models lists {twice[0]!r} twice; to weight a model more, use linear with `weight`")
    if spec.max_models is not None and len(models) > spec.max_models:
        raise ValueError(f"{method} merges exactly {spec.max_models} models, got {len(models)}; use linear or ties for more")
    if spec.needs_base and not base:
        raise ValueError(f"{method} needs `base`, the common ancestor of the models (e.g. pruned), to form task vectors")
    if not spec.needs_base and base:
        raise ValueError(f"{method} takes no `base` (got {base!r}); remove it, or use ties")
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        hint = did_you_mean(unknown[0], spec.defaults)
        raise ValueError(f"{method} has no param {unknown[0]!r}{hint}; allowed: {sorted(spec.defaults)}")
    resolved = {**spec.defaults, **params}
    for key in spec.per_model:
        value = resolved[key]
        if isinstance(value, list) and len(value) != len(models):
            raise ValueError(f"{method} param {key} has {len(value)} values for {len(models)} models; give one per model")
    if method == "slerp" and not 0.0 <= resolved["t"] <= 1.0:
        raise ValueError(f"slerp t={resolved['t']} is outside [0, 1]; t=0 gives the first model, t=1 the second")
    if method == "ties":
        densities = resolved["density"] if isinstance(resolved["density"], list) else [resolved["density"]]
        if not all(0.0 < d <= 1.0 for d in densities):
            raise ValueError(f"ties density {resolved['density']} must be in (0, 1]: the fraction of each task vector kept")
    return resolved


# Config keys that must agree for tensors to line up one to one.
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


@dataclass(frozen=True)
class ModelInfo:
    """What compatibility depends on, read without loading weights."""

    architecture: str
    num_hidden_layers: int
    shape: dict
    vocab: dict


def describe(path: Path) -> ModelInfo:
    """Read a checkpoint's config and tokenizer vocabulary (no weights)."""
    from transformers import AutoTokenizer

    from sdd.modelio import check_model_dir

    config = check_model_dir(Path(path))
    vocab = AutoTokenizer.from_pretrained(path).get_vocab()
    return ModelInfo(
        architecture=(config.get("architectures") or ["?"])[0],
        num_hidden_layers=config.get("num_hidden_layers", -1),
        shape={key: config.get(key) for key in SHAPE_KEYS} | {"vocab_size": config.get("vocab_size")},
        vocab=vocab,
    )


def check_compatible(infos: dict[str, ModelInfo]) -> None:
    """Refuse models whose tensors or tokens do not correspond one to one; name the mismatch."""
    if len(infos) < 2:
        raise ValueError(f"a merge needs at least 2 models, got {len(infos)}: {sorted(infos)}")
    (first, ref), *rest = infos.items()
    for name, info in rest:
        if info.architecture != ref.architecture:
            raise ValueError(f"architecture mismatch: {first} is {ref.architecture}, {name} is {info.architecture}; "
                             f"only models of one architecture can be merged")
        if info.num_hidden_layers != ref.num_hidden_layers:
            raise ValueError(f"layer count mismatch: {first} has {ref.num_hidden_layers} layers, {name} has "
                             f"{info.num_hidden_layers}; merge models pruned the same way (same prune params)")
        for key, value in ref.shape.items():
            if info.shape[key] != value:
                raise ValueError(f"config mismatch on {key}: {first} has {value}, {name} has {info.shape[key]}")
        if info.vocab != ref.vocab:
            differ = sorted(set(info.vocab.items()) ^ set(ref.vocab.items()))[:3]
            raise ValueError(f"tokenizer mismatch: {first} and {name} have different vocabularies "
                             f"({len(ref.vocab)} vs {len(info.vocab)} tokens; e.g. {differ}); "
                             f"merge only models fine-tuned from the same base with the same tokenizer")


def mergekit_config(method: str, params: dict, models: list[Path], base: Path | None, dtype: str) -> dict:
    """The mergekit configuration (as its YAML would read) for a validated recipe.

    SLERP uses the first model as mergekit's base, so t=0 is the first model and t=1 the second.
    Math runs in float32; `dtype` is the saved dtype.
    """
    spec = METHODS[method]
    entries = []
    for i, model in enumerate(models):
        per_model = {key: params[key][i] if isinstance(params[key], list) else params[key]
                     for key in spec.per_model if params[key] is not None}
        entries.append({"model": str(model), **({"parameters": per_model} if per_model else {})})
    shared = {key: value for key, value in params.items() if key not in spec.per_model}
    if method == "linear" and params["weight"] is None:  # equal weights unless given
        for entry in entries:
            entry["parameters"] = {"weight": 1.0}
    if method == "ties" and params["weight"] is None:
        for entry in entries:
            entry.setdefault("parameters", {})["weight"] = 1.0
    base_model = str(models[0]) if method == "slerp" else (str(base) if base else None)
    return {"merge_method": spec.mergekit_name, "models": entries, "base_model": base_model,
            "parameters": shared, "dtype": "float32", "out_dtype": dtype}


def merge(config: dict, out: Path) -> None:
    """Run mergekit on `config` (from `mergekit_config`), writing a standard checkpoint to `out`.

    The tokenizer and its chat template are copied from mergekit's donor (the base model, or the
    first model); `check_compatible` has made sure all tokenizers agree.
    """
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, run_merge

    merge_config = MergeConfiguration.model_validate(config)
    options = MergeOptions(copy_tokenizer=True, safe_serialization=True, quiet=True, random_seed=0,
                           device="cpu", write_model_card=True)
    try:
        run_merge(merge_config, out_path=str(out), options=options)
    finally:
        # mergekit caches lazy loaders per path in a process-wide singleton; a later merge reading
        # a rewritten directory at the same path must not see stale tensors.
        LoaderCache().loaders.clear()


def skeleton(path: Path):
    """The model a checkpoint's config describes, on the meta device (no memory): for its summary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
