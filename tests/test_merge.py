"""Merging through mergekit: SLERP endpoints are exact, a model merged with itself is unchanged,
incompatible models fail before loading with a message naming the mismatch, the result loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import TypeAdapter
from safetensors.torch import load_file

from sdd.config.merge import MergeRecipe
from sdd.config.params import Params
from sdd.model import merging
from sdd.model.checkpoint import load_model

from conftest import REPO, build_llama, build_tokenizer, save_tiny


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


RECIPE = TypeAdapter(MergeRecipe)


def run_merge(tmp: Path, method: str, models: list[Path], base: Path | None = None, **params) -> Path:
    names = [f"finetuned/{m.name}" for m in models]
    recipe = RECIPE.validate_python(
        {"method": method, "models": names, **({"base": "pruned"} if base else {}), **params}
    )
    out = tmp / f"merged-{method}-{len(list(tmp.iterdir()))}"
    merging.merge(merging.mergekit_config(recipe, models, base, "float32"), out)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return save_tiny(root / "a", num_layers=4, seed=1), save_tiny(root / "b", num_layers=4, seed=2)


@pytest.mark.parametrize("t, expected", [(0.0, 0), (1.0, 1)])
def test_slerp_endpoints_return_each_input_exactly(tmp_path, pair, t, expected):
    out = run_merge(tmp_path, "slerp", list(pair), t=t)
    merged, source = weights(out), weights(pair[expected])
    assert merged.keys() == source.keys()
    for key, tensor in source.items():
        assert torch.equal(merged[key], tensor), key


def test_slerp_of_a_model_with_itself_is_the_model(tmp_path, pair):
    twin = shutil.copytree(pair[0], tmp_path / "twin")  # mergekit refuses the same path twice
    out = run_merge(tmp_path, "slerp", [pair[0], twin], t=0.5)
    merged = weights(out)
    for key, tensor in weights(pair[0]).items():
        torch.testing.assert_close(merged[key], tensor, rtol=0, atol=1e-6, msg=key)


def test_slerp_follows_the_formula(tmp_path, pair):
    # SLERP(t) = sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b, θ the angle between the flattened tensors.
    out = run_merge(tmp_path, "slerp", list(pair), t=0.25)
    key = "model.layers.0.mlp.down_proj.weight"
    a, b, m = weights(pair[0])[key], weights(pair[1])[key], weights(out)[key]
    cos = (a * b).sum() / (a.norm() * b.norm())
    theta = torch.acos(cos)
    expected = torch.sin(0.75 * theta) / torch.sin(theta) * a + torch.sin(0.25 * theta) / torch.sin(theta) * b
    torch.testing.assert_close(m, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(m, 0.75 * a + 0.25 * b, atol=1e-3)  # not a plain linear blend


def test_linear_is_the_weighted_average(tmp_path, pair):
    out = run_merge(tmp_path, "linear", list(pair), weight=[3.0, 1.0])
    a, b, m = weights(pair[0]), weights(pair[1]), weights(out)
    for key in a:
        torch.testing.assert_close(m[key], 0.75 * a[key] + 0.25 * b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_ties_with_identical_task_vectors_adds_them_once(tmp_path, pair):
    # Both "fine-tuned" models are b, the base is a: every task vector is b - a, consensus keeps
    # it, normalised disjoint mean of density-1 vectors is b - a again, so the result is b.
    twin = shutil.copytree(pair[1], tmp_path / "twin")
    out = run_merge(tmp_path, "ties", [pair[1], twin], base=pair[0], density=1.0)
    m = weights(out)
    for key, tensor in weights(pair[1]).items():
        torch.testing.assert_close(m[key], tensor, rtol=1e-5, atol=1e-5, msg=key)


def test_merged_checkpoint_loads_with_tokenizer_and_chat_template(tmp_path, pair):
    out = run_merge(tmp_path, "slerp", list(pair), t=0.3)
    model, tok = load_model(out)
    assert model.config.num_hidden_layers == 4
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "How many clips?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_mismatched_layer_counts_fail_before_loading(tmp_path, pair):
    short = save_tiny(tmp_path / "short", num_layers=3, seed=3)
    infos = {"finetuned/a": merging.describe(pair[0]), "finetuned/short": merging.describe(short)}
    with pytest.raises(ValueError, match=r"layer count mismatch: finetuned/a has 4 layers, finetuned/short has 3"):
        merging.check_compatible(infos)


def test_mismatched_tokenizers_fail_naming_them(tmp_path, pair):
    tok = build_tokenizer()
    tok.add_tokens(["<|tool|>"])
    other = tmp_path / "other"
    build_llama(build_tokenizer(), num_layers=4, seed=4).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ValueError, match=r"tokenizer mismatch: a and other"):
        merging.check_compatible({"a": merging.describe(pair[0]), "other": merging.describe(other)})


def test_mismatched_shapes_fail_naming_the_key(tmp_path, pair):
    wide = tmp_path / "wide"
    tok = build_tokenizer()
    build_llama(tok, num_layers=4, seed=5, hidden=128).save_pretrained(wide)
    tok.save_pretrained(wide)
    with pytest.raises(ValueError, match=r"config mismatch on hidden_size: a has 64, wide has 128"):
        merging.check_compatible({"a": merging.describe(pair[0]), "wide": merging.describe(wide)})


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"method": "slerp", "models": ["finetuned/a"]}, "exactly 2 models, got 1"),
        ({"models": ["finetuned/a", "finetuned/b"], "method": "slurp"}, "did you mean 'slerp'"),
        ({"models": ["finetuned/a", "finetuned/b"]}, "a recipe needs `method`"),
        ({"method": "slerp", "models": ["finetuned/a", "finetuned/b"], "t": 1.5}, r"t=1.5 is outside \[0, 1\]"),
        ({"method": "linear", "models": ["finetuned/a", "finetuned/b", "finetuned/c"]}, "merge more as a chain"),
        ({"method": "ties", "models": ["finetuned/a", "finetuned/b"]}, r"ties\.base\n  Field required"),
        ({"method": "linear", "models": ["finetuned/a", "finetuned/b"], "weight": [1.0]}, "1 values for 2 models"),
        ({"method": "slerp", "models": ["finetuned/a", "finetuned/b"], "density": 0.5}, "Extra inputs"),
        ({"method": "ties", "models": ["finetuned/a", "finetuned/b"], "base": "finetuned/c"}, "must be one of"),
        ({"method": "slerp", "models": ["finetuned/a", "finetuned/a"]}, "lists 'finetuned/a' twice"),
    ],
)
def test_bad_recipes_fail_at_params_time(recipe, message):
    with pytest.raises(ValueError, match=message):
        RECIPE.validate_python(recipe)


@pytest.mark.parametrize(
    "recipes, message",
    [
        ({"m": {"method": "slerp", "models": ["pruned", "elsewhere/x"]}}, "a merge input is base, pruned"),
        ({"m": {"method": "slerp", "models": ["pruned", "merged/nope"]}}, "merge.recipes has no 'nope'"),
        (
            {
                "a": {"method": "slerp", "models": ["pruned", "merged/b"]},
                "b": {"method": "slerp", "models": ["pruned", "merged/a"]},
            },
            "a -> b -> a is a cycle",
        ),
    ],
)
def test_merge_inputs_are_models_a_stage_writes(recipes, message):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["merge"]["recipes"] = recipes
    params["speculate"]["skip"] = params["evaluate"]["skip"] = []
    with pytest.raises(ValueError, match=message):
        Params.model_validate(params)


def test_a_chain_of_merges_is_accepted():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["merge"]["recipes"] = {
        "ab": {"method": "slerp", "models": ["finetuned/sft", "finetuned/sdd"]},
        "abc": {"method": "ties", "models": ["merged/ab", "finetuned/kd_sdd"], "base": "pruned"},
    }
    assert Params.model_validate(params).merge.recipes["abc"].inputs() == ["merged/ab", "finetuned/kd_sdd", "pruned"]


@pytest.mark.slow
def test_stage_writes_merged_model_and_metrics(tmp_path, pair):
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # the real file: other sections stay valid
    arms = list(params["finetune"]["arms"])[:2]
    models = tmp_path / "data" / "models"
    (models / "finetuned").mkdir(parents=True)
    for name, src in zip(arms, pair):
        os.symlink(src, models / "finetuned" / name)
    params["paths"] = {"models": "data/models", "metrics": "metrics"}
    params["merge"] = {
        "dtype": "bfloat16",
        "recipes": {"mix": {"models": [f"finetuned/{a}" for a in arms], "method": "slerp", "t": 0.5}},
    }
    params["speculate"]["drafts"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.merge", "mix"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = models / "merged" / "mix"
    assert {"config.json", "model.safetensors", "tokenizer.json", "mergekit_config.yml"} <= {
        p.name for p in out.iterdir()
    }
    assert weights(out)["model.embed_tokens.weight"].dtype == torch.bfloat16
    metrics = json.loads((tmp_path / "metrics" / "merge" / "mix.json").read_text())
    assert metrics["method"] == "slerp" and metrics["t"] == 0.5 and metrics["num_hidden_layers"] == 4

    bad = subprocess.run(
        [sys.executable, "-m", "stages.merge", "mixx"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "did you mean 'mix'" in bad.stderr
