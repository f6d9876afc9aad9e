"""Merge fine-tuned models with mergekit (SLERP by default) into one standard checkpoint.

    python -m stages.merge <recipe>          (dvc.yaml: merge@<recipe>, over params `merge.recipes`)

Reads the recipe's models (and `base` for ties) from `<paths.models>/`; checks before loading any
weights that they share architecture, layer count, shapes and tokenizer; writes
`<paths.models>/merged/<recipe>/` (safetensors, config, tokenizer, chat template, mergekit config)
and `<paths.metrics>/merge/<recipe>.json`.
"""

from __future__ import annotations

from sdd.artifacts import atomic_path, write_json
from sdd.config import load_params
from sdd.errors import require
from sdd.model import checkpoint, merging
from sdd.model.card import merge_card, write_card
from sdd.runtime import log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    name = stage_args(argv, __doc__, "recipe", "a key of merge.recipes in params.yaml").recipe
    params = load_params()
    recipes = params.merge.recipes
    require(name, recipes, "merge.recipes")
    recipe = recipes[name]
    log_params(f"merge@{name}", {"dtype": params.merge.dtype, **recipe.model_dump()})
    with timed(f"merge@{name}") as summary:
        models = [params.paths.model_dir(m) for m in recipe.models]
        base = params.paths.model_dir(recipe.base) if recipe.method == "ties" else None
        merging.check_compatible({str(path): merging.describe(path) for path in [*models, *([base] if base else [])]})
        config = merging.mergekit_config(recipe, models, base, params.merge.dtype)
        with atomic_path(params.paths.model_dir(f"merged/{name}")) as out:
            merging.merge(config, out)
            checkpoint.check_model_dir(out)  # config and weights agree (layer count)
            skeleton = merging.skeleton(out)
            write_card(out, merge_card(params, name, recipe.method, recipe.models, recipe.model_dump()))
        info = {**checkpoint.summary(skeleton), "recipe": name, **recipe.model_dump(), "dtype": params.merge.dtype}
        write_json(params.paths.metrics_file("merge", name), info)
        write_json(
            params.paths.headline_file("merge", name),
            {"layers": info["num_hidden_layers"], "parameters": info["parameters"]},
        )
        summary.update(method=recipe.method, models=len(models), layers=info["num_hidden_layers"])


if __name__ == "__main__":
    run_stage(main)
