"""`datasets.<name>`: one SFT source; `prepare`: how rows are admitted."""

from __future__ import annotations

import re
import typing
from typing import Literal

from pydantic import Field

from sdd.config.base import Section

Format = Literal["alpaca", "dolly", "dolly_hhrlhf", "gsm8k", "openmath"]
FORMATS: tuple[str, ...] = typing.get_args(Format)  # sdd/data/adapters.py ADAPTERS has one adapter each

# A local source: a data file, possibly compressed ("rows.jsonl.gz"). sdd/data/sources.py reads
# .gz, .bz2, .xz and .lzma, and refuses the others saying how to unpack them.
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".lzma", ".zip", ".zst", ".7z", ".rar")
_LOCAL = re.compile(rf"({'|'.join(map(re.escape, DATA_SUFFIXES))})({'|'.join(map(re.escape, COMPRESSED_SUFFIXES))})?$")


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
        """A file name with a data extension, compressed or not ("rows.jsonl", "rows.csv.gz"); else a hub id."""
        return bool(_LOCAL.search(self.source))


class PrepareParams(Section):
    max_rejected_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    max_chars: int = Field(default=20_000, gt=0)
