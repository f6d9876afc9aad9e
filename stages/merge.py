"""Merge fine-tuned models with mergekit (SLERP by default) into one standard checkpoint.

    python -m stages.merge <recipe>          (dvc.yaml: merge@<recipe>, over params `merge.recipes`)

Reads the recipe's models (and `base` for ties) from `<paths.models>/`; checks before loading any
weights that they share architecture, layer count, shapes and tokenizer; writes
`<paths.models>/merged/<recipe>/` (safetensors, config, tokenizer, chat template, mergekit config)
and `<paths.metrics>/merge/<recipe>.json`.
"""

from __future__ import annotations

import argparse

from sdd import merging, modelio
from sdd.io import atomic_path, write_json
from sdd.params import did_you_mean, load_params
from sdd.runtime import log_params, run_stage, timed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.merge", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a key of merge.recipes in params.yaml")
    name = parser.parse_args(argv).recipe
    params = load_params()
    recipes = params.merge.recipes
    if name not in recipes:
        raise ValueError(f"unknown merge recipe {name!r}{did_you_mean(name, recipes)}; merge.recipes has {sorted(recipes)}")
    recipe = recipes[name]
    log_params(f"merge@{name}", {"dtype": params.merge.dtype, **recipe.model_dump()})
    with timed(f"merge@{name}") as summary:
        models = [params.paths.model_dir(m) for m in recipe.models]
        base = params.paths.model_dir(recipe.base) if recipe.base else None
        infos = {str(path): merging.describe(path) for path in [*models, *([base] if base else [])]}
        merging.check_compatible(infos)
        config = merging.mergekit_config(recipe.method, recipe.resolved_params(), models, base, params.merge.dtype)
        out_dir = params.paths.model_dir(f"merged/{name}")
        with atomic_path(out_dir) as out:
            merging.merge(config, out)
            modelio.check_model_dir(out)  # config and weights agree (layer count)
            skeleton = merging.skeleton(out)
        info = {**modelio.summary(skeleton), "recipe": name, "method": recipe.method, "params": recipe.resolved_params(),
                "models": recipe.models, "base": recipe.base, "dtype": params.merge.dtype}
        write_json(params.paths.metrics_file("merge", name), info)
        summary.update(method=recipe.method, models=len(models), layers=info["num_hidden_layers"])


if __name__ == "__main__":
    run_stage(main)
