"""`layer_scores`: block redundancy scores over calibration text; `prune`: which block to cut."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdd.config.base import ComputeDtype, Section

Proxy = Literal["angular_last_token", "angular_mean_token", "block_influence"]
PROXIES: tuple[str, ...] = typing.get_args(Proxy)  # computed from one pass (sdd/model/layer_scores.py)
Metric = Literal["angular_last_token", "angular_mean_token", "block_influence", "kl_to_base"]
METRICS: tuple[str, ...] = typing.get_args(Metric)  # the proxies plus the measured KL


class LayerScoresParams(Section):
    """Prepared rows rendered with the chat template; scores for every (start, n <= max_n)."""

    metric: Metric = "kl_to_base"
    token: Literal["last", "last_content"] = "last_content"
    datasets: list[str] = Field(default=["gsm8k", "alpaca"], min_length=1)
    samples: int = Field(default=8, gt=0)
    max_length: int = Field(default=384, gt=8)
    batch_size: int = Field(default=4, gt=0)
    seed: int = 0
    max_n: int = Field(default=8, gt=0)
    dtype: ComputeDtype = "auto"
    kl_n_layers: list[int] = Field(default=[6], min_length=1)
    shortlist: int | None = Field(default=4, gt=0)
    shortlist_proxy: Proxy = "angular_mean_token"

    @model_validator(mode="after")
    def _kl_sizes(self) -> LayerScoresParams:
        big = [n for n in self.kl_n_layers if n > self.max_n]
        if big:
            raise ValueError(
                f"kl_n_layers {big} exceed max_n={self.max_n}; raise max_n (the shortlist ranks blocks "
                f"by a proxy table that stops at max_n) or drop them"
            )
        return self


class PruneParams(Section):
    """Cut layers [start, start + n_layers)."""

    n_layers: int = Field(default=6, gt=0)
    start: Literal["auto"] | int = "auto"
    flops_context: int = Field(default=0, ge=0)

    @field_validator("start")
    @classmethod
    def _start(cls, value: Literal["auto"] | int) -> Literal["auto"] | int:
        if isinstance(value, int) and value < 0:
            raise ValueError(f"start must be `auto` or a layer index >= 0, got {value}")
        return value
