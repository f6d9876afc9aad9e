"""Remove a block of consecutive decoder layers from the base model and save a standard checkpoint.

    python -m stages.prune               (dvc.yaml: prune)

Reads `<paths.models>/base` and, with `prune.start: auto`, the best start for `prune.n_layers`
from `<paths.metrics>/layer_scores/scores.json`; writes `<paths.models>/pruned` (safetensors,
config, tokenizer, chat template) and `<paths.metrics>/prune/prune.json` (removed layers, unique
parameters and analytic forward FLOPs per token before/after, reductions in percent).
"""

from __future__ import annotations

import copy

from sdd.artifacts import atomic_path, read_json, write_json
from sdd.config import load_params
from sdd.errors import InputError
from sdd.model import pruning
from sdd.model.card import pruned_card, write_card
from sdd.model.checkpoint import load_model, save_model
from sdd.runtime import log_params, run_stage, stage_args, timed


def chosen_start(params, num_layers: int) -> tuple[int, str]:
    """(start, how it was chosen): the explicit index, or the scores' best start for n_layers."""
    cfg = params.prune
    if cfg.start != "auto":
        return cfg.start, "explicit"
    path = params.paths.metrics_file("layer_scores", "scores")
    scores = read_json(path)
    best = scores.get("best_start", {})
    if str(cfg.n_layers) not in best:
        raise InputError(
            f"{path} has no best start for prune.n_layers={cfg.n_layers} (metric {scores.get('metric')}: "
            f"n in {sorted(best, key=int)}); raise layer_scores.max_n / kl_n_layers and rerun layer_scores"
        )
    if scores.get("num_layers") != num_layers:
        raise InputError(
            f"{path} scores a {scores.get('num_layers')}-layer model but the base model has {num_layers} "
            f"layers; rerun `dvc repro layer_scores`"
        )
    return int(best[str(cfg.n_layers)]), f"auto: argmin of {scores['metric']} ({scores['token']} token)"


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    cfg, paths = params.prune, params.paths
    log_params("prune", cfg)
    with timed("prune") as summary:
        model, tokenizer = load_model(paths.model_dir("base"), params.base_model.dtype)
        before = copy.deepcopy(model.config)
        params_before = sum(p.numel() for p in model.parameters())
        start, how = chosen_start(params, before.num_hidden_layers)
        removed = pruning.drop_layers(model, start, cfg.n_layers)
        params_after = sum(p.numel() for p in model.parameters())
        flops_before = pruning.flops_per_token(before, cfg.flops_context)
        flops_after = pruning.flops_per_token(model.config, cfg.flops_context)
        metrics = {
            "removed_layers": removed,
            "start": start,
            "n_layers": cfg.n_layers,
            "start_chosen_by": how,
            "num_layers_before": before.num_hidden_layers,
            "num_layers_after": model.config.num_hidden_layers,
            "parameters_before": params_before,
            "parameters_after": params_after,
            "params_reduction_pct": pruning.reduction_pct(params_before, params_after),
            "flops_per_token_before": flops_before,
            "flops_per_token_after": flops_after,
            "flops_reduction_pct": pruning.reduction_pct(flops_before, flops_after),
            "flops_context": cfg.flops_context,
            "flops_formula": "forward: 2 * (decoder-layer matmul weights + LM head, once even if tied) + 2 * n_layer "
            "* n_ctx * d_attn, n_ctx = flops_context; the embedding is a lookup (Kaplan et al. 2020, Table 1)",
        }
        with atomic_path(paths.model_dir("pruned")) as out:
            save_model(model, tokenizer, out, params.base_model.dtype)
            write_card(out, pruned_card(params, metrics))
        write_json(paths.metrics_file("prune"), metrics)
        headline = {k: metrics[k] for k in ("start", "n_layers", "params_reduction_pct", "flops_reduction_pct")}
        write_json(paths.headline_file("prune"), headline)
        summary.update(removed=f"{removed[0]}-{removed[-1]}", **headline)


if __name__ == "__main__":
    run_stage(main)
