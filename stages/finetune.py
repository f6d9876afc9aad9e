"""Fine-tune the pruned model on one arm's data (LoRA by default) and save the merged checkpoint.

    python -m stages.finetune sdd       (dvc.yaml: finetune@sdd; arms come from params finetune.arms)

Reads `<paths.models>/pruned` and, per dataset of the arm, the prepared (`original`) or distilled
(`distilled`, the selected response) Parquet. Writes `<paths.models>/finetuned/<arm>/` (merged full
checkpoint + tokenizer + chat template, the LoRA adapter in `adapter/`), the metrics
`<paths.metrics>/finetune/<arm>.json` and dvclive loss curves in `<paths.metrics>/finetune/<arm>/`.
Checkpoints go to `<paths.scratch>/finetune/<arm>/`; a re-run with the same inputs resumes from the
last one. With `finetune.num_processes > 1` the stage re-launches itself under `accelerate launch`
(DDP; gloo on CPU).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from sdd import finetune as ft
from sdd.io import atomic_path, read_parquet, write_json
from sdd.modelio import check_model_dir, load_model, save_model
from sdd.params import did_you_mean, load_params
from sdd.runtime import device, log_params, run_stage, timed
from sdd.schemas import DISTILLED, PREPARED

log = logging.getLogger(__name__)
LAUNCHED = "SDD_FINETUNE_LAUNCHED"  # set for the workers that `launch` starts: they must not launch again


def read_arm(paths, data: dict[str, str], val_fraction: float, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(train rows, validation rows, the same validation rows with the original response)."""
    train, val, val_original = [], [], []
    for ds, kind in data.items():
        if kind == "original":
            df = read_parquet(paths.prepared_file(ds), PREPARED, producer=f"prepare@{ds}")
            df = df.assign(response_original=df["response"])
        else:
            df = read_parquet(paths.distilled_file(ds), DISTILLED, producer=f"distill@{ds}")
        rows = df.to_dict("records")
        held_out = ft.split_by_id([r["id"] for r in rows], val_fraction, seed)
        train += [r for r in rows if r["id"] not in held_out]
        val += [r for r in rows if r["id"] in held_out]
        val_original += [{**r, "response": r["response_original"]} for r in rows if r["id"] in held_out]
    return train, val, val_original


def file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def prepare_run_dir(run_dir: Path, fingerprint: str) -> None:
    """Keep checkpoints only if they were made from the same settings, data and model."""
    stamp = run_dir / "fingerprint"
    if stamp.is_file() and stamp.read_text() != fingerprint:
        log.info("inputs changed since the checkpoints in %s were written; starting over", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)


def launch(arm: str, num_processes: int, on_cpu: bool) -> None:
    """Re-run this stage as `num_processes` DDP workers through `accelerate launch`."""
    with socket.socket() as sock:  # a free port, so parallel runs on one machine do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # --multi_gpu selects accelerate's torchrun launcher on CPU too (its --cpu mode needs MPI for
    # several processes); the Trainer then runs DDP with gloo because TrainingArguments.use_cpu is set.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "stages.finetune", arm]
    log.info("launching %d processes: %s", num_processes, " ".join(cmd))
    subprocess.run(cmd, check=True, env={**os.environ, LAUNCHED: "1", **({"OMP_NUM_THREADS": "1"} if on_cpu else {})})


def main(argv: list[str]) -> None:
    (arm,) = argv
    params = load_params()
    cfg, paths = params.finetune, params.paths
    if arm not in cfg.arms:
        raise ValueError(f"unknown arm {arm!r}{did_you_mean(arm, cfg.arms)}; finetune.arms has {sorted(cfg.arms)}")
    data, dev = cfg.arms[arm], device()
    model_dir, run_dir = paths.model_dir("pruned"), Path(paths.scratch) / "finetune" / arm
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get(LAUNCHED) and world_size != cfg.num_processes:
        raise ValueError(f"launched as one of {cfg.num_processes} processes but WORLD_SIZE={world_size}; "
                         f"the accelerate launcher did not start a distributed run")
    if not os.environ.get(LAUNCHED):  # the launching process checks inputs and owns the checkpoint folder
        log_params(f"finetune@{arm}", {"data": data, **cfg.training_settings()})
        check_model_dir(model_dir)
        read_arm(paths, data, cfg.val_fraction, cfg.seed)  # fails here, before any model load
        inputs = sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"] + [
            paths.prepared_file(ds) if kind == "original" else paths.distilled_file(ds) for ds, kind in data.items()]
        prepare_run_dir(run_dir, ft.fingerprint(cfg.training_settings(), data, file_digest(inputs)))
        if cfg.num_processes > 1:
            launch(arm, cfg.num_processes, dev == "cpu")
            return
    with timed(f"finetune@{arm}") as summary:
        summary.update(train(arm, params, run_dir, dev, world_size))


def resolved(params, arm: str, run_dir: Path, dev: str, world_size: int = 1) -> tuple[dict, object]:
    """(the arm's data, the TrainingArguments) exactly as training uses them."""
    cfg = params.finetune
    return cfg.arms[arm], ft.training_arguments(cfg, str(run_dir / "checkpoints"), dev, world_size)


def train(arm: str, params, run_dir: Path, dev: str, world_size: int) -> dict:
    import datasets
    from transformers import Trainer

    cfg, paths = params.finetune, params.paths
    data, args = resolved(params, arm, run_dir, dev, world_size)
    start = time.perf_counter()
    model, tok = load_model(paths.model_dir("pruned"), "float32")
    train_rows, val_rows, val_original_rows = read_arm(paths, data, cfg.val_fraction, cfg.seed)
    train_ex, counts = ft.encode_rows(train_rows, tok, cfg.max_seq_len, cfg.overlong)
    if not train_ex:
        raise ValueError(f"arm {arm!r}: no training example left after finetune.overlong={cfg.overlong} at "
                         f"max_seq_len={cfg.max_seq_len} ({counts}); raise finetune.max_seq_len")
    evals = {"val": ft.encode_rows(val_rows, tok, cfg.max_seq_len, "truncate")[0]}
    if "distilled" in data.values():
        evals["val_original"] = ft.encode_rows(val_original_rows, tok, cfg.max_seq_len, "truncate")[0]
    as_dataset = lambda ex: datasets.Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in ex])  # noqa: E731

    model = ft.apply_method(model, cfg)
    resume = ft.last_complete_checkpoint(Path(args.output_dir))
    is_main = int(os.environ.get("RANK", "0")) == 0
    curves = ft.LossCurves(run_dir / "live", resume_step=ft.checkpoint_step(resume)) if is_main else None
    trainer = Trainer(model=model, args=args, train_dataset=as_dataset(train_ex),
                      eval_dataset={name: as_dataset(ex) for name, ex in evals.items()},
                      data_collator=ft.collator(tok, cfg.batching), callbacks=[curves] if curves else [])
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    final = trainer.evaluate()
    if not trainer.is_world_process_zero():
        return {}
    history = trainer.state.log_history
    metrics = {
        "arm": arm, "data": data, "method": cfg.method, "batching": cfg.batching, "num_processes": world_size,
        "bf16": args.bf16, "device": dev, "resumed_from_step": ft.checkpoint_step(resume),
        "steps": trainer.state.global_step, "epochs": round(trainer.state.epoch or 0.0, 3),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "train_rows": len(train_ex), "val_rows": len(evals["val"]), "encode": counts,
        "train_loss_last": ft.last_logged(history, "loss"), "train_loss_mean": round(result.training_loss, 4),
        "val_loss": round(final["eval_val_loss"], 4),
        "val_original_loss": round(final.get("eval_val_original_loss", final["eval_val_loss"]), 4),
        "train_seconds": round(result.metrics["train_runtime"], 2),
        "tokens_per_second": round(trainer.state.num_input_tokens_seen / result.metrics["train_runtime"], 1),
    }
    curves.finish()
    out = paths.model_dir(f"finetuned/{arm}")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if cfg.method == "lora":
            trainer.model.save_pretrained(tmp / "adapter")
            merged = trainer.model.merge_and_unload()
        else:
            merged = trainer.model
        save_model(merged, tok, tmp, cfg.save_dtype)
    with atomic_path(Path(paths.metrics) / "finetune" / arm) as tmp:  # dvc.yaml declares it as plots
        shutil.copytree(run_dir / "live" / "plots" / "metrics", tmp)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
    write_json(paths.metrics_file("finetune", arm), metrics)
    return {k: metrics[k] for k in ("steps", "tokens_seen", "train_loss_last", "val_loss", "tokens_per_second")}


if __name__ == "__main__":
    run_stage(main)
