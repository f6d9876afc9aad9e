"""Fine-tune the pruned model on one arm's data (LoRA by default) and save the merged checkpoint.

    python -m stages.finetune sdd       (dvc.yaml: finetune@sdd; arms come from params finetune.arms)

Reads `<paths.models>/pruned` and, per dataset of the arm, the prepared (`original`) or distilled
(`distilled`, the selected response) Parquet. Runs the recipe's steps (sdd/model/recipe.py: data ->
model -> objective -> train -> results) and writes `<paths.models>/finetuned/<arm>/` (merged full
checkpoint + tokenizer + chat template + model card, the LoRA adapter in `adapter/`),
`<paths.metrics>/finetune/<arm>.json` (+ `.headline.json`) and the dvclive loss curves in
`<paths.metrics>/finetune/<arm>/`. Checkpoints go to `<paths.scratch>/finetune/<arm>/`; a re-run with
the same inputs resumes from the last one. With `finetune.num_processes` x `num_machines` > 1 the stage
re-launches itself under `accelerate launch` with `finetune.accelerate_config` (gloo on CPU).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sdd.artifacts import atomic_path, write_json
from sdd.config import load_params
from sdd.config.finetune import world_size as processes
from sdd.errors import InputError, require
from sdd.model import recipe
from sdd.model.card import write_card
from sdd.model.checkpoint import save_adapter, save_model
from sdd.model.launch import LAUNCHED, launch
from sdd.runtime import device, log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    arm = stage_args(argv, __doc__, "arm", "a key of finetune.arms in params.yaml").arm
    params = load_params()
    cfg, paths = params.finetune, params.paths
    require(arm, cfg.arms, "finetune.arms")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    run = recipe.Run.of(params, arm, Path(paths.scratch) / "finetune" / arm, device(), world_size)
    if os.environ.get(LAUNCHED) and world_size != processes(cfg):
        raise InputError(
            f"launched as one of {processes(cfg)} processes (finetune.num_processes x num_machines) but "
            f"WORLD_SIZE={world_size}: the launcher did not start a distributed run; check launch.finetune"
        )
    if not os.environ.get(LAUNCHED):  # the launching process checks the inputs and owns the checkpoint folder
        log_params(f"finetune@{arm}", {**run.spec.model_dump(), **cfg.training_settings()})
        recipe.prepare(run)
        if processes(cfg) > 1:
            return launch(arm, cfg, run.dev == "cpu")
    with timed(f"finetune@{arm}") as summary:
        model, tokenizer = recipe.load_model(run)
        data = recipe.load_data(run, tokenizer)
        trained = recipe.train(run, model, tokenizer, data)
        metrics = recipe.results(run, trained, data)
        if metrics is None:  # a non-main process of a distributed run: the main one writes
            return
        assert trained.curves is not None
        trained.curves.finish()
        with atomic_path(paths.model_dir(f"finetuned/{arm}")) as tmp:
            tmp.mkdir()
            merged = trained.model
            if run.method == "lora":
                save_adapter(trained.model, tmp / "adapter")
                merged = trained.model.merge_and_unload()
            save_model(merged, tokenizer, tmp, cfg.save_dtype)
            write_card(tmp, recipe.card(params, arm, run.method, metrics, trained.args))
        with atomic_path(Path(paths.metrics) / "finetune" / arm) as tmp:  # dvc.yaml declares it as plots
            shutil.copytree(run.run_dir / "live" / "plots" / "metrics", tmp)
        write_json(paths.metrics_file("finetune", arm), metrics)
        write_json(paths.headline_file("finetune", arm), {k: metrics[k] for k in recipe.HEADLINE})
        summary.update({k: metrics[k] for k in recipe.HEADLINE})


if __name__ == "__main__":
    run_stage(main)
