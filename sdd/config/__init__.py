"""Typed view of `params.yaml`: one pydantic model per section (`sdd/config/<section>.py`), the
whole file in `sdd/config/params.py`. Every stage reads its knobs only through these models."""

from sdd.config.params import MIRROR_ENV, PARAMS_FILE, Params, load_params

__all__ = ["MIRROR_ENV", "PARAMS_FILE", "Params", "load_params"]
