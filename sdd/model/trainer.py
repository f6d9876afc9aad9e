"""One recovery fine-tuning run: an arm's data, the Trainer, the saved checkpoint, and the
multi-process launch.

    train_rows, val, val_original = read_arm(paths, {"gsm8k": "distilled"}, val_fraction=0.1, seed=0)
    rows = dataset_rows(paths, "gsm8k", "original")              # one dataset's rows as an arm reads them
    metrics = train(arm, params, run_dir, device, world_size)     # resumes from run_dir's checkpoints
    launch(arm, params.finetune, on_cpu=True)                     # re-runs the stage under accelerate (DDP/FSDP)

The pieces (encoding, collators, TrainingArguments, LoRA) are in `sdd/model/training.py`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdd.artifacts import atomic_path, read_parquet, write_json
from sdd.config import Params
from sdd.config.finetune import ArmParams, FinetuneParams, sharded, world_size
from sdd.config.paths import Paths
from sdd.data.examples import encode_rows, split_by_id
from sdd.data.schemas import DISTILLED, PREPARED
from sdd.errors import InputError
from sdd.hardware import precision_record
from sdd.model import training as ft
from sdd.model.card import Card, dataset_ids, how_of, lineage, write_card
from sdd.model.checkpoint import load_model, save_adapter, save_model

log = logging.getLogger(__name__)
LAUNCHED = "SDD_FINETUNE_LAUNCHED"  # set for the workers that `launch` starts: they must not launch again


def arm_inputs(paths: Paths, arm: ArmParams) -> list[Path]:
    """The files an arm trains on: its data, and for `kd` the teacher logits of that data (and of
    the original responses, on which it is validated too)."""
    files = [
        paths.prepared_file(ds) if kind == "original" else paths.distilled_file(ds) for ds, kind in arm.data.items()
    ]
    if arm.objective == "kd":  # validation on the original responses uses their teacher logits too
        for ds, kind in sorted({*arm.data.items(), *((ds, "original") for ds in arm.data)}):
            folder = paths.teacher_dir(ds, kind)
            files += [folder / "manifest.json", *sorted(folder.glob("*.safetensors"))]
    return files


def teacher_producer(ds: str, kind: str) -> str:
    """The dvc.yaml stage that writes a dataset's teacher logits."""
    return f"teacher_logits@{ds}" if kind == "original" else f"teacher_logits_distilled@{ds}"


def dataset_rows(paths: Paths, ds: str, kind: str) -> list[dict]:
    """A dataset's rows with `response` = the text an arm of this kind trains on (and `response_original`)."""
    if kind == "original":
        df = read_parquet(paths.prepared_file(ds), PREPARED, producer=f"prepare@{ds}")
        df = df.assign(response_original=df["response"])
    else:
        df = read_parquet(paths.distilled_file(ds), DISTILLED, producer=f"distill@{ds}")
    return df.to_dict("records")


def read_arm(
    paths: Paths, data: Mapping[str, str], val_fraction: float, seed: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train rows, validation rows, the same validation rows with the original response)."""
    train_rows: list[dict] = []
    val: list[dict] = []
    val_original: list[dict] = []
    for ds, kind in data.items():
        rows = dataset_rows(paths, ds, kind)
        held_out = split_by_id([r["id"] for r in rows], val_fraction, seed)
        train_rows += [r for r in rows if r["id"] not in held_out]
        val += [r for r in rows if r["id"] in held_out]
        val_original += [{**r, "response": r["response_original"]} for r in rows if r["id"] in held_out]
    return train_rows, val, val_original


def machine(num_machines: int, env: Mapping[str, str]) -> tuple[int, str | None, int | None]:
    """(this machine's rank, the main machine's address, its port) for `accelerate launch`: from the
    cluster launcher's environment when training spans machines (Slurm's SLURM_NODEID, or
    MACHINE_RANK / NODE_RANK; MASTER_ADDR and MASTER_PORT), else rank 0 on this machine."""
    if num_machines == 1:
        return 0, None, None
    rank = next((env[k] for k in ("MACHINE_RANK", "NODE_RANK", "SLURM_NODEID") if k in env), None)
    if rank is None or "MASTER_ADDR" not in env:
        raise InputError(
            f"finetune.num_machines={num_machines} needs MASTER_ADDR (the first machine's address) and the "
            "machine rank (SLURM_NODEID, MACHINE_RANK or NODE_RANK) from the launcher: e.g. launch.finetune: "
            '"srun --nodes=2 --ntasks-per-node=1 --export=ALL,MASTER_ADDR=<first node>" (README: Slurm)'
        )
    return int(rank), env["MASTER_ADDR"], int(env.get("MASTER_PORT", "29500"))


def accelerate_config(cfg: FinetuneParams, dev: str) -> Path:
    """The accelerate config file of a multi-process run, checked: it exists, and FSDP is not asked
    of CPU processes (accelerate runs FSDP only on GPUs; on CPU it would silently run DDP)."""
    path = Path(cfg.accelerate_config)
    if not path.is_file():
        raise InputError(
            f"finetune.accelerate_config: {path} does not exist; use configs/accelerate/ddp.yaml or "
            "configs/accelerate/fsdp.yaml (shipped), or an `accelerate config` file of your own"
        )
    if sharded(cfg) and dev == "cpu":
        raise InputError(
            f"finetune.accelerate_config: {path} asks for FSDP, which accelerate runs only on GPUs (several "
            "CPU processes would silently run DDP); use configs/accelerate/ddp.yaml on CPU"
        )
    return path


def launch(arm: str, cfg: FinetuneParams, on_cpu: bool) -> None:
    """Re-run the finetune stage as `world_size(cfg)` workers through `accelerate launch`, with the
    accelerate config `cfg.accelerate_config` (DDP or FSDP) and the machine counts from params."""
    rank, address, port = machine(cfg.num_machines, os.environ)
    if port is None:
        with socket.socket() as sock:  # a free port, so parallel runs on one machine do not collide
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    # The configs select accelerate's torchrun launcher on CPU too (its --cpu mode needs MPI for several
    # processes); the Trainer then runs gloo because TrainingArguments.use_cpu is set.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        cfg.accelerate_config,
        "--num_processes",
        str(world_size(cfg)),
        "--num_machines",
        str(cfg.num_machines),
        "--machine_rank",
        str(rank),
        *(["--main_process_ip", address] if address else []),
        "--main_process_port",
        str(port),
        "-m",
        "stages.finetune",
        arm,
    ]
    log.info("launching %d processes: %s", world_size(cfg), " ".join(cmd))
    subprocess.run(cmd, check=True, env={**os.environ, LAUNCHED: "1", **({"OMP_NUM_THREADS": "1"} if on_cpu else {})})


def arm_seed(cfg: Any, arm: str) -> int:
    """The seed of an arm's data order and LoRA init: its own `seed`, else finetune.seed (read field by
    field: a section method would count as reading every key of the section)."""
    own = cfg.arms[arm].seed
    return cfg.seed if own is None else own


def resolved(
    params: Params, arm: str, run_dir: Path, dev: str, world_size: int = 1, train_examples: int = 0
) -> tuple[ArmParams, Any]:
    """(the arm, the TrainingArguments) exactly as training uses them."""
    cfg = params.finetune
    steps = ft.total_steps(cfg, train_examples, world_size)
    args = ft.training_arguments(cfg, str(run_dir / "checkpoints"), dev, world_size, steps, arm_seed(cfg, arm))
    return cfg.arms[arm], args


def teacher_lookup(paths: Paths, data: Mapping[str, str]) -> Any:
    """example -> its teacher row, over the teacher logits of every dataset of the arm."""
    from sdd.model.teacher import TeacherStore

    stores = [TeacherStore.open(paths.teacher_dir(ds, kind), teacher_producer(ds, kind)) for ds, kind in data.items()]
    by_id = {row: store for store in stores for row in store.index}
    return lambda ex: (by_id.get(ex["id"]) or stores[0]).get(ex["id"])


def arm_card(params: Params, arm: str, method: str, metrics: dict, args: Any) -> Card:
    """The model card of a trained arm: its pruned parent's lineage, then how it was trained."""
    cfg, spec = params.finetune, params.finetune.arms[arm]
    base_ids, licence = lineage(params)
    data = ", ".join(f"{ds} ({kind} responses)" for ds, kind in spec.data.items())
    if method == "lora":
        how = f"LoRA rank {cfg.lora.rank}, alpha {cfg.lora.alpha} on {', '.join(cfg.lora.target_modules)}, merged"
    elif method == "last_layers":
        how = f"last {cfg.last_layers.n} decoder layers, final norm and LM head trained in full"
    else:
        how = "every weight trained"
    objective = (
        f"logit distillation from the base model's top-{params.teacher_logits.top_k} log-probs "
        f"(alpha {cfg.kd.alpha}, T {cfg.kd.temperature})"
        if spec.objective == "kd"
        else "cross-entropy on the response tokens"
    )
    batch = cfg.batch_size * cfg.grad_accum * metrics["num_processes"]
    return Card(
        f"{arm}: recovery fine-tuning of a pruned model",
        base_ids,
        dataset_ids(params, list(spec.data)),
        [
            *how_of(params.paths.model_dir("pruned")),
            f"Recovery arm `{arm}`: {data}; self-distilled responses are the base model's own rewrites, "
            "answer-checked for math",
            f"Objective: {objective}; method: {how}",
            f"{metrics['steps']} optimizer steps ({metrics['epochs']} epochs over {metrics['train_rows']} rows), "
            f"effective batch {batch}, {metrics['tokens_seen']:,} tokens, lr {cfg.learning_rate} {cfg.schedule}, "
            f"seed {metrics['seed']}, bf16 {args.bf16}",
            f"Validation loss {metrics['val_loss']} ({metrics['val_rows']} held-out rows)",
        ],
        licence,
        ["recovery", spec.objective, method],
    )


def whole(trainer: Any, pruned: Path, folder: Path, method: str) -> Any:
    """The trained model in one piece on the main process (None elsewhere). Under FSDP each process
    holds a shard of every weight: `save_model` gathers the full state dict (the configs' FULL_STATE_DICT)
    into `folder` on the main process, which reloads it: the adapter onto the pruned model, or the weights."""
    from transformers import AutoModelForCausalLM

    trainer.save_model(str(folder))  # collective: every process takes part
    if not trainer.is_world_process_zero():
        return None
    if method != "lora":
        return AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(pruned, "float32")[0], folder)


def train(arm: str, params: Params, run_dir: Path, dev: str, world_size: int) -> dict:
    """Train one arm (resuming from the newest complete checkpoint), save the merged model, the
    metrics and the loss curves; returns the headline numbers (empty on non-main processes)."""
    from transformers import Trainer, set_seed

    cfg, paths = params.finetune, params.paths
    spec = cfg.arms[arm]
    data, method = spec.data, spec.method or cfg.method  # an arm's own method, else the shared one
    start = time.perf_counter()
    model, tok = load_model(paths.model_dir("pruned"), "float32")
    train_rows, val_rows, val_original_rows = read_arm(paths, data, cfg.val_fraction, cfg.seed)
    train_ex, counts = encode_rows(train_rows, tok, cfg.max_seq_len, cfg.overlong)
    _, args = resolved(params, arm, run_dir, dev, world_size, len(train_ex))
    if not train_ex:
        raise InputError(
            f"arm {arm!r}: no training example left after finetune.overlong={cfg.overlong} at "
            f"max_seq_len={cfg.max_seq_len} ({counts}); raise finetune.max_seq_len"
        )
    evals = {"val": encode_rows(val_rows, tok, cfg.max_seq_len, "truncate")[0]}
    if "distilled" in data.values():
        evals["val_original"] = encode_rows(val_original_rows, tok, cfg.max_seq_len, "truncate")[0]

    collator = ft.collator(tok, cfg.batching)
    extra: dict[str, Any] = {}
    if spec.objective == "kd":
        lookup = teacher_lookup(paths, data)
        train_ex, evals["val"] = ft.attach_teacher(train_ex, lookup), ft.attach_teacher(evals["val"], lookup)
        if "val_original" in evals:  # the original responses' teacher logits
            original = teacher_lookup(paths, dict.fromkeys(data, "original"))
            evals["val_original"] = ft.attach_teacher(evals["val_original"], original)
        collator, extra = ft.WithTeacher(collator), {"kd": cfg.kd}

    set_seed(
        arm_seed(cfg, arm)
    )  # the LoRA init draws from torch's RNG, before the Trainer seeds it: two runs must start equal
    model = ft.apply_method(model, cfg, method)
    resume = ft.last_complete_checkpoint(Path(args.output_dir))
    is_main = int(os.environ.get("RANK", "0")) == 0
    curves = ft.LossCurves(run_dir / "live", resume_step=ft.checkpoint_step(resume)) if is_main else None
    timer = ft.StepTimer()
    trainer = (ft.DistillationTrainer if spec.objective == "kd" else Trainer)(
        model=model,
        args=args,
        train_dataset=ft.ExampleDataset(train_ex),
        eval_dataset={name: ft.ExampleDataset(ex) for name, ex in evals.items()},
        data_collator=collator,
        callbacks=[timer, curves] if curves else [timer],
        **extra,
    )
    if resume:
        log.info("resuming from %s", resume)
    if sharded(cfg) != trainer.is_fsdp_enabled:
        raise RuntimeError(
            f"finetune.accelerate_config={cfg.accelerate_config} but accelerate runs "
            f"{trainer.accelerator.distributed_type}; FSDP runs only in processes that `accelerate launch` "
            "started on GPUs (finetune.num_processes > 1)"
        )
    resumed_tokens = ft.tokens_at(resume)  # read now: the trainer rotates old checkpoints away
    result = trainer.train(resume_from_checkpoint=resume)
    final = trainer.evaluate()
    trained: Any = whole(trainer, paths.model_dir("pruned"), run_dir / "final", method) if sharded(cfg) else model
    if not trainer.is_world_process_zero() or curves is None:
        return {}
    history = trainer.state.log_history
    metrics = {
        "arm": arm,
        "data": data,
        "objective": spec.objective,
        "method": method,
        "seed": arm_seed(cfg, arm),
        **ft.trainable_summary(model),
        "batching": cfg.batching,
        "num_processes": world_size,
        "sharding": "fsdp" if trainer.is_fsdp_enabled else None,  # what accelerate actually ran
        "bf16": args.bf16,
        "device": dev,
        "precision": precision_record(cfg.precision, "bf16" if args.bf16 else "fp32"),
        "resumed_from_step": ft.checkpoint_step(resume),
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "train_rows": len(train_ex),
        "val_rows": len(evals["val"]),
        "encode": counts,
        "train_loss_last": ft.last_logged(history, "loss"),
        "train_loss_mean": round(result.training_loss, 4),
        "val_loss": round(final["eval_val_loss"], 4),
        "val_original_loss": round(final.get("eval_val_original_loss", final["eval_val_loss"]), 4),
        "train_seconds": round(result.metrics["train_runtime"], 2),
        "eval_steps": args.eval_steps,
        "save_steps": args.save_steps,
        "share_outside_optimizer_steps": round(1 - timer.seconds / result.metrics["train_runtime"], 3),
        # this run's tokens only: a resumed run trained on the tokens after its checkpoint
        "tokens_per_second": round(
            (trainer.state.num_input_tokens_seen - resumed_tokens) / result.metrics["train_runtime"], 1
        ),
    }
    curves.finish()
    with atomic_path(paths.model_dir(f"finetuned/{arm}")) as tmp:
        tmp.mkdir()
        if method == "lora":
            save_adapter(trained, tmp / "adapter")
            merged = trained.merge_and_unload()
        else:
            merged = trained
        save_model(merged, tok, tmp, cfg.save_dtype)
        write_card(tmp, arm_card(params, arm, method, metrics, args))
    with atomic_path(Path(paths.metrics) / "finetune" / arm) as tmp:  # dvc.yaml declares it as plots
        shutil.copytree(run_dir / "live" / "plots" / "metrics", tmp)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
    write_json(paths.metrics_file("finetune", arm), metrics)
    headline = {
        k: metrics[k]
        for k in ("steps", "tokens_seen", "train_loss_last", "val_loss", "val_original_loss", "tokens_per_second")
    }
    write_json(paths.headline_file("finetune", arm), headline)
    return headline
