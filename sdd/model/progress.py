"""Progress of a training run: the checkpoints it can resume from, the time inside optimizer steps,
and the loss curves (dvclive) by optimizer step.

    resume = last_complete_checkpoint(run_dir / "checkpoints")
    curves = LossCurves(run_dir / "live", resume_step=checkpoint_step(resume))
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest Trainer checkpoint that was fully written and is not the run's last step.

    The Trainer writes trainer_state.json last, so a run killed while saving leaves a folder
    without a readable one: skip it. A checkpoint at the final step (saved when save_steps divides
    max_steps) is skipped too: transformers resumes from it by training one step past the end, so
    the run resumes from the one before and repeats those steps exactly."""
    found = sorted(Path(folder).glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)
    for checkpoint in found:
        try:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            log.warning("skipping incomplete checkpoint %s (interrupted while saving)", checkpoint)
            continue
        if state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]:
            log.info("skipping %s: it is the last step of its run; resuming from an earlier one", checkpoint)
            continue
        return str(checkpoint)
    return None


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The optimizer step of a Trainer checkpoint folder (`.../checkpoint-<step>`)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else None


def tokens_at(checkpoint: str | None) -> int:
    """Input tokens the run had seen when `checkpoint` was saved (0 without one): a resumed run's
    throughput counts only the tokens it trained on itself."""
    if not checkpoint:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0))


# Trainer log key -> dvclive curve name (files plots/metrics/<name>.tsv).
CURVES = {"loss": "train/loss", "eval_val_loss": "val/loss", "eval_val_original_loss": "val_original/loss"}


class StepTimer(TrainerCallback):
    """Seconds spent inside optimizer steps (forward, backward, update); the rest of `train()` is
    validation, checkpoints, logging and data loading."""

    def __init__(self) -> None:
        self.seconds, self._start = 0.0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._start


class LossCurves(TrainerCallback):
    """dvclive loss curves indexed by optimizer step. (transformers' own DVCLiveCallback advances
    the dvclive step on every log call, so one step's train and validation losses land on
    different x values.) On resume, points logged after the checkpoint are dropped first."""

    def __init__(self, folder: Path, resume_step: int | None):
        from dvclive import Live

        if resume_step is not None:
            for tsv in Path(folder, "plots", "metrics").rglob("*.tsv"):
                lines = tsv.read_text().splitlines()
                kept = lines[:1] + [
                    ln for ln in lines[1:] if int(ln.split("\t")[lines[0].split("\t").index("step")]) <= resume_step
                ]
                tsv.write_text("\n".join(kept) + "\n")
        self.live = Live(dir=str(folder), resume=resume_step is not None, save_dvc_exp=False, dvcyaml=None, report=None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logged = {name: logs[key] for key, name in CURVES.items() if key in (logs or {})}
        if logged:
            self.live.step = state.global_step
            for name, value in logged.items():
                self.live.log_metric(name, value)

    def finish(self) -> None:
        self.live.end()


def last_logged(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return round(values[-1], 4) if values else None
