"""`report`: the recovery table: the baseline, and the pairs that get a paired bootstrap CI."""

from __future__ import annotations

from pydantic import Field

from sdd.config.base import Section


class ReportParams(Section):
    baseline: str = "base"
    compare: list[tuple[str, str]] = [
        ("sdd", "sft"),
        ("sdd_merged", "sdd"),
        ("kd", "sdd"),
        ("kd_sdd", "sdd"),
        ("sft_last3", "sft"),
    ]  # (a, b): CI of average(a) - average(b)
    # model -> the same recipe trained under other seeds (evaluate.models names, e.g. an arm with
    # `seed: 1`): comparisons use the per-item mean over the replicates and report the between-seed spread
    replicates: dict[str, list[str]] = {}
    bootstrap: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = 0
