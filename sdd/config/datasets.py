"""`datasets.<name>`: one SFT source; `prepare`: how rows are admitted."""

from __future__ import annotations

import re
import typing
from typing import Literal

from pydantic import Field

from sdd.config.base import Section

Format = Literal["alpaca", "dolly", "dolly_hhrlhf", "gsm8k", "openmath"]
FORMATS: tuple[str, ...] = typing.get_args(Format)  # sdd/data/adapters.py ADAPTERS has one adapter each


class DatasetParams(Section):
    """A hub id (resolved through the mirror when set) or a local file."""

    source: str = Field(min_length=1)
    config: str = "default"
    split: str = "train"
    revision: str | None = None
    format: Format
    limit: int | None = Field(default=None, gt=0)
    seed: int = 0
    # A local source must lie in the project directory or the mirror: rejected rows are copied
    # into the quarantine file that `dvc push` uploads. true allows any path.
    allow_outside: bool = False

    @property
    def is_local(self) -> bool:
        return bool(re.search(r"\.(jsonl|json|parquet|csv)$", self.source))


class PrepareParams(Section):
    max_rejected_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    max_chars: int = Field(default=20_000, gt=0)
