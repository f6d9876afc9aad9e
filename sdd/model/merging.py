"""Model merging through mergekit used as a library: recipe checks, mergekit config, the merge.

    from sdd.model.merging import check_compatible, describe, merge
    check_compatible({"a": describe(dir_a), "b": describe(dir_b)})   # reads configs/tokenizers only
    merge(mergekit_config(recipe, [dir_a, dir_b], base=None, dtype="bfloat16"), out_dir)

Methods (the recipe types of `sdd/config/merge.py`), all implemented by mergekit:
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
from dataclasses import dataclass
from pathlib import Path

from sdd.config.merge import LinearRecipe, MergeRecipe, SlerpRecipe
from sdd.errors import InputError

log = logging.getLogger(__name__)


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

    from sdd.model.checkpoint import check_model_dir

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
        raise InputError(f"a merge needs at least 2 models, got {len(infos)}: {sorted(infos)}")
    (first, ref), *rest = infos.items()
    for name, info in rest:
        if info.architecture != ref.architecture:
            raise InputError(
                f"architecture mismatch: {first} is {ref.architecture}, {name} is {info.architecture}; "
                f"only models of one architecture can be merged"
            )
        if info.num_hidden_layers != ref.num_hidden_layers:
            raise InputError(
                f"layer count mismatch: {first} has {ref.num_hidden_layers} layers, {name} has "
                f"{info.num_hidden_layers}; merge models pruned the same way (same prune params)"
            )
        for key, value in ref.shape.items():
            if info.shape[key] != value:
                raise InputError(f"config mismatch on {key}: {first} has {value}, {name} has {info.shape[key]}")
        if info.vocab != ref.vocab:
            differ = sorted(set(info.vocab.items()) ^ set(ref.vocab.items()))[:3]
            raise InputError(
                f"tokenizer mismatch: {first} and {name} have different vocabularies "
                f"({len(ref.vocab)} vs {len(info.vocab)} tokens; e.g. {differ}); "
                f"merge only models fine-tuned from the same base with the same tokenizer"
            )


def mergekit_config(recipe: MergeRecipe, models: list[Path], base: Path | None, dtype: str) -> dict:
    """The mergekit configuration (as its YAML would read) for a validated recipe.

    SLERP uses the first model as mergekit's base, so t=0 is the first model and t=1 the second.
    Linear and TIES weigh every model 1.0 unless `weight` is given. Math runs in float32; `dtype`
    is the saved dtype.
    """
    per_model: dict[str, float | list[float] | None] = {}
    shared: dict[str, float | bool] = {}
    if isinstance(recipe, SlerpRecipe):
        shared = {"t": recipe.t}
    elif isinstance(recipe, LinearRecipe):
        per_model, shared = (
            {"weight": recipe.weight if recipe.weight is not None else 1.0},
            {"normalize": recipe.normalize},
        )
    else:
        per_model = {"weight": recipe.weight if recipe.weight is not None else 1.0, "density": recipe.density}
        shared = {"normalize": recipe.normalize}
    entries = []
    for i, model in enumerate(models):
        values = {key: value[i] if isinstance(value, list) else value for key, value in per_model.items()}
        entries.append({"model": str(model), **({"parameters": values} if values else {})})
    base_model = str(models[0]) if isinstance(recipe, SlerpRecipe) else (str(base) if base else None)
    return {
        "merge_method": recipe.method,
        "models": entries,
        "base_model": base_model,
        "parameters": shared,
        "dtype": "float32",
        "out_dtype": dtype,
    }


def merge(config: dict, out: Path) -> None:
    """Run mergekit on `config` (from `mergekit_config`), writing a standard checkpoint to `out`.

    The tokenizer and its chat template are copied from mergekit's donor (the base model, or the
    first model); `check_compatible` has made sure all tokenizers agree.
    """
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, run_merge

    merge_config = MergeConfiguration.model_validate(config)
    options = MergeOptions(
        copy_tokenizer=True, safe_serialization=True, quiet=True, random_seed=0, device="cpu", write_model_card=True
    )
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
