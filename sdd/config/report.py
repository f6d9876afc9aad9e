"""`report`: the recovery table: the baseline, and the pairs that get a paired bootstrap CI."""

from __future__ import annotations

from pydantic import Field

from sdd.config.base import Section


class ReportParams(Section):
    baseline: str = "base"
    compare: list[tuple[str, str]] = [
        ("sdd", "sft"),
        ("kd", "sdd"),
        ("kd_sdd", "sdd"),
        ("sft_last3", "sft"),
    ]  # (a, b): CI of average(a) - average(b)
    bootstrap: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = 0
