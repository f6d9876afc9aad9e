"""Fine-tune the pruned model on one arm's data (LoRA by default) and save the merged checkpoint.

    python -m stages.finetune sdd       (dvc.yaml: finetune@sdd; arms come from params finetune.arms)

Reads `<paths.models>/pruned` and, per dataset of the arm, the prepared (`original`) or distilled
(`distilled`, the selected response) Parquet. Writes `<paths.models>/finetuned/<arm>/` (merged full
checkpoint + tokenizer + chat template, the LoRA adapter in `adapter/`), the headline metrics
`<paths.metrics>/finetune/<arm>.headline.json`, the details `<paths.metrics>/finetune/<arm>.json`
and dvclive loss curves in `<paths.metrics>/finetune/<arm>/`. Checkpoints go to
`<paths.scratch>/finetune/<arm>/`; a re-run with the same inputs resumes from the last one. With
`finetune.num_processes` x `num_machines` > 1 the stage re-launches itself under `accelerate launch` with
`finetune.accelerate_config` (configs/accelerate/ddp.yaml or fsdp.yaml; gloo on CPU).
"""

from __future__ import annotations

import os
from pathlib import Path

from sdd.artifacts import read_json
from sdd.cache import file_digest, fingerprint, keyed_dir
from sdd.config import load_params
from sdd.config.finetune import sharded
from sdd.config.finetune import world_size as processes
from sdd.errors import require
from sdd.model import memory, pruning
from sdd.model.checkpoint import check_model_dir
from sdd.model.trainer import LAUNCHED, accelerate_config, arm_inputs, launch, read_arm, teacher_lookup, train
from sdd.runtime import device, log_params, run_stage, stage_args, timed


def check_memory(arm: str, cfg, model_dir: Path, dev: str) -> None:
    """Fail before loading anything when one training process cannot fit on its device."""
    config = pruning.config_from_dict(read_json(model_dir / "config.json"))
    method = cfg.arms[arm].method or cfg.method
    trainable = memory.trainable_estimate(config, method, cfg.lora.rank, cfg.lora.target_modules, cfg.last_layers.n)
    shards = processes(cfg) if sharded(cfg) else 1
    need = memory.training_memory(config, method, trainable, cfg.batch_size * cfg.max_seq_len, shards)
    fixes = ["lower finetune.batch_size (raise grad_accum to keep the effective batch) or finetune.max_seq_len"]
    if method == "full" and not sharded(cfg):
        fixes += ["use finetune.method: lora, or shard it: finetune.accelerate_config: configs/accelerate/fsdp.yaml"]
    else:
        fixes += ["use more processes (FSDP shards the weights) or GPUs with more memory"]
    memory.check_fits(need, memory.device_memory(dev), f"finetune@{arm} ({method}, {dev})", fixes)


def main(argv: list[str]) -> None:
    arm = stage_args(argv, __doc__, "arm", "a key of finetune.arms in params.yaml").arm
    params = load_params()
    cfg, paths = params.finetune, params.paths
    require(arm, cfg.arms, "finetune.arms")
    spec, dev = cfg.arms[arm], device()
    model_dir, run_dir = paths.model_dir("pruned"), Path(paths.scratch) / "finetune" / arm
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get(LAUNCHED) and world_size != processes(cfg):
        raise RuntimeError(
            f"launched as one of {processes(cfg)} processes but WORLD_SIZE={world_size}; "
            f"the accelerate launcher did not start a distributed run"
        )
    if not os.environ.get(LAUNCHED):  # the launching process checks inputs and owns the checkpoint folder
        log_params(f"finetune@{arm}", {**spec.model_dump(), **cfg.training_settings()})
        check_model_dir(model_dir)
        read_arm(paths, spec.data, cfg.val_fraction, cfg.seed)  # fails here, before any model load
        check_memory(arm, cfg, model_dir, dev)
        if spec.objective == "kd":  # so do missing or invalid teacher logits (validated on original text too)
            for data in (spec.data, dict.fromkeys(spec.data, "original")):
                teacher_lookup(paths, data)
        inputs = sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"] + arm_inputs(paths, spec)
        if processes(cfg) > 1:
            inputs.append(accelerate_config(cfg, dev))
        keyed_dir(
            run_dir,
            fingerprint({"settings": cfg.training_settings(), "arm": spec.model_dump(), "inputs": file_digest(inputs)}),
        )
        if processes(cfg) > 1:
            launch(arm, cfg, dev == "cpu")
            return
    with timed(f"finetune@{arm}") as summary:
        summary.update(train(arm, params, run_dir, dev, world_size))


if __name__ == "__main__":
    run_stage(main)
