"""Training over several processes or machines: the stage re-runs itself under `accelerate launch`
with the accelerate config of params (DDP or FSDP), the machine rank and address from the launcher.

    if world_size(cfg) > 1 and not os.environ.get(LAUNCHED):
        launch(arm, cfg, on_cpu=True)
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from sdd.config.finetune import FinetuneParams, sharded, world_size
from sdd.errors import InputError

log = logging.getLogger(__name__)
LAUNCHED = "SDD_FINETUNE_LAUNCHED"  # set for the workers that `launch` starts: they must not launch again


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
