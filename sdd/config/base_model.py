"""`base_model`: where the model to prune comes from."""

from __future__ import annotations

from sdd.config.base import Dtype, Section


class BaseModelParams(Section):
    """`bundled:<name>`, a hub id (pin `revision`), or a local directory."""

    source: str = "bundled:smollm2-135m-instruct"
    revision: str | None = None
    dtype: Dtype = "bfloat16"
    trust_remote_code: bool = False
    allow_pickle: bool = False
