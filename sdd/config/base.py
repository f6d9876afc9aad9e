"""What every params section shares: frozen, strict pydantic models, and the shared name lists."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict

Dtype = Literal["float32", "bfloat16", "float16"]  # how weights are stored (saved checkpoints)
DTYPES: tuple[str, ...] = typing.get_args(Dtype)
# What a stage computes in: `auto` = what the device does natively (sdd/hardware.py resolve_dtype).
ComputeDtype = Literal["auto", "float32", "bfloat16", "float16"]


class Section(BaseModel):
    """A params section: immutable, and an unknown key is an error (a typo never passes silently)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
