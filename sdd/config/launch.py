"""`launch`: a command prefix per heavy stage family, templated into dvc.yaml's `cmd`, so one params
file runs the same DAG on a laptop ("" = run here) or hands each stage to a cluster launcher that
blocks until the job ends (`srun --gres=gpu:8 --`, `sbatch --wait --wrap`, `ray job submit --`).
DVC still hashes the inputs and the outputs; the launcher only decides where the command runs.
dvc.yaml writes `${launch.<family>}python -m ...`: an empty prefix leaves the command as it is, and a
non-empty one must end with a space (checked here)."""

from __future__ import annotations

from pydantic import field_validator

from sdd.config.base import Section


class LaunchParams(Section):
    distill: str = ""
    teacher_logits: str = ""
    layer_scores: str = ""
    finetune: str = ""
    merge: str = ""
    fidelity_reference: str = ""
    evaluate: str = ""
    speculate: str = ""

    @field_validator("*")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if value and not value[-1].isspace():
            raise ValueError(
                f"{value!r}: a launch prefix is glued to the stage's command, so it must end with a space "
                f"(write {value + ' '!r}, quoted in YAML)"
            )
        if any(c in value for c in "\n;&|`"):
            raise ValueError(
                f"{value!r}: a launch prefix is one command that runs the stage's command "
                "(e.g. 'srun --gres=gpu:1 --'); no newlines, ';', '&', '|' or backquotes"
            )
        return value
