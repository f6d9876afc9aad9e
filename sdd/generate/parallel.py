"""Data-parallel distillation: `distill.engine_args.data_parallel_size` engines side by side, each
generating its share of the chunks into the stage's resumable chunk store.

    run = rewrites(cfg, model_dir, prompts, ids, fits, store, budgets, ["gsm8k"])   # None in a worker
    run_workers(["gsm8k"], size=2, tensor_parallel=1)   # what it does with N > 1: blocks until all end
    shard = worker_shard(os.environ)                     # in a worker: (rank, size), else None

This is vLLM's data-parallel deployment for dense models (weights replicated, each engine serves
independent requests, `tensor_parallel_size` devices per engine), started from one stage on one
machine: chunk c belongs to worker c % size, so the work splits without a scheduler and the texts are
the same whatever the number of workers (a chunk is one batch, whichever engine runs it). A killed
worker loses only its unfinished chunk: the stage fails naming it, and the re-run generates what is
missing while every finished chunk is read back.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from sdd.cache import PieceStore
from sdd.config.distill import DistillParams
from sdd.errors import InputError
from sdd.generate.distill import Rewrites, combine, generate_rewrites

log = logging.getLogger(__name__)
WORKER = "SDD_DISTILL_WORKER"  # "<rank>/<size>" in the processes run_workers starts


def worker_shard(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(rank, size) of a worker process, None in the stage's own process."""
    value = env.get(WORKER)
    if not value:
        return None
    rank, size = (int(part) for part in value.split("/"))
    return rank, size


def worker_env(rank: int, size: int, tensor_parallel: int, gpus: list[str], cores: list[int]) -> dict[str, str]:
    """What worker `rank` of `size` adds to its environment: its block of `tensor_parallel` of the
    visible GPUs, or on a machine without GPUs its own share of the cores (vLLM's CPU backend binds
    its OpenMP threads to them; torch uses as many threads)."""
    env = {WORKER: f"{rank}/{size}"}
    if gpus:
        if size * tensor_parallel > len(gpus):
            raise InputError(
                f"distill.engine_args: data_parallel_size {size} x tensor_parallel_size {tensor_parallel} needs "
                f"{size * tensor_parallel} GPUs but {len(gpus)} are visible; lower one of them"
            )
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[rank * tensor_parallel : (rank + 1) * tensor_parallel])
        return env
    per = max(1, len(cores) // size)
    mine = cores[rank * per : (rank + 1) * per] or [cores[rank % len(cores)]]
    env["OMP_NUM_THREADS"] = str(len(mine))
    if tensor_parallel == 1:  # with TP on CPU, vLLM's own binding splits the cores between its ranks
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in mine)
    return env


def visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",") if listed else [str(i) for i in range(torch.cuda.device_count())]


def run_workers(stage_args: list[str], size: int, tensor_parallel: int) -> None:
    """Run `python -m stages.distill <stage_args>` as `size` workers at once and wait for all of
    them; raises naming the ones that failed (the others' chunks are kept either way)."""
    gpus, cores = visible_gpus(), sorted(os.sched_getaffinity(0))
    procs = []
    try:
        for rank in range(size):
            env = {**os.environ, **worker_env(rank, size, tensor_parallel, gpus, cores)}
            procs.append(subprocess.Popen([sys.executable, "-m", "stages.distill", *stage_args], env=env))
            log.info("distill worker %d of %d started (pid %d)", rank, size, procs[-1].pid)
        codes = [proc.wait() for proc in procs]
    finally:  # interrupted: stop the workers too (their finished chunks are already saved)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
    failed = {rank: code for rank, code in enumerate(codes) if code != 0}
    if failed:
        raise RuntimeError(
            f"distill workers failed (rank: exit code) {failed}; every chunk they finished is kept: "
            "re-run the stage to generate only the missing ones"
        )


def rewrites(
    cfg: DistillParams,
    model_dir: Path,
    prompts: list[list[int]],
    ids: list[str],
    fits: list[bool],
    store: PieceStore,
    budgets: list[int],
    stage_args: list[str],
) -> Rewrites | None:
    """The stage's rewrites of every row: generated here (one engine), or by `data_parallel_size`
    workers and read back from the store. In a worker: its share, saved with what it did; None."""
    shard, size = worker_shard(os.environ), cfg.engine_args.data_parallel_size
    if shard:
        run = generate_rewrites(cfg, model_dir, prompts, ids, fits, store, budgets, shard)
        store.save(f"worker-{shard[0]}-of-{shard[1]}", [], {k: v for k, v in vars(run).items() if k != "generations"})
        return None
    if size > 1:
        run_workers(stage_args, size, cfg.engine_args.tensor_parallel_size)
    run = generate_rewrites(cfg, model_dir, prompts, ids, fits, store, budgets)  # after workers: all read back
    if size == 1:
        return run
    return combine(run, [worker_record(store, rank, size) for rank in range(size)])


def worker_record(store: PieceStore, rank: int, size: int) -> Rewrites:
    saved = store.load(f"worker-{rank}-of-{size}", [])
    if saved is None:
        raise RuntimeError(f"distill worker {rank} of {size} exited 0 without its record in {store.dir}")
    return Rewrites(**saved)
