"""`report`: the recovery table: the baseline, and the pairs that get a paired bootstrap CI."""

from __future__ import annotations

from pydantic import Field

from sdd.config.base import Section


class ReportParams(Section):
    baseline: str = "base"  # recovery = average(model) / average(baseline)
    start: str = "pruned"  # the model recovery starts from: every arm and merge is compared with it
    # (a, b) pairs compared besides the automatic ones (each arm/merge vs its `control` and vs `start`)
    compare: list[tuple[str, str]] = []
    bootstrap: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = 0
