"""Which params keys a stage really reads, so a test can check dvc.yaml declares them all.

With `SDD_PARAMS_TRACE=<dir>` set, `load_params()` returns the params wrapped in a recorder that
appends every dotted key read (`finetune.arms.sft`, `evaluate.tasks`, ...) to
`<dir>/<stage>[@<arg>].keys`. Calling a method of a section (`cfg.model_dump()`) counts as reading that
whole section. Off (the default) it costs nothing: the plain params object is returned.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

TRACE_ENV = "SDD_PARAMS_TRACE"


class _Recorder:
    """Wraps a section (pydantic model) or a map of named entries; reads are appended to `sink`."""

    def __init__(self, value: Any, key: str, sink: Path):
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_sink", sink)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance() sees the wrapped section's class
        return type(self._value)

    def _read(self, *keys: str) -> None:
        with self._sink.open("a", encoding="utf-8") as fh:
            fh.writelines(k.lstrip(".") + "\n" for k in keys)

    def __getattr__(self, name: str) -> Any:
        value, key = getattr(self._value, name), f"{self._key}.{name}"
        if name == "paths" and not self._key:  # dvc.yaml templates paths into deps and outs
            return value
        if isinstance(value, BaseModel | dict):
            return _Recorder(value, key, self._sink)
        if not callable(value):
            if self._key != "" or name not in ("paths", "data_mirror"):  # paths are templated into dvc.yaml
                self._read(key)
            return value
        named = {"dataset": "datasets", "model": "models"}  # params.dataset(n), evaluate.model(n)
        if name in named:

            def lookup(entry: str) -> Any:
                found, key = value(entry), f"{self._key}.{named[name]}.{entry}"
                if isinstance(found, BaseModel):
                    return _Recorder(found, key, self._sink)
                self._read(key)
                return found

            return lookup
        if name == "mirror":  # the mirror's content is fingerprinted by source@ stages, not a param
            return value
        fields = [f for f in type(self._value).model_fields]
        if name in ("model_dump", "training_settings"):

            def dump(*args: Any, **kwargs: Any) -> Any:
                skip = set(kwargs.get("exclude") or ()) | ({"arms"} if name == "training_settings" else set())
                self._read(*(f"{self._key}.{f}" for f in fields if f not in skip))
                return value(*args, **kwargs)

            return dump
        self._read(self._key)  # any other method reads the whole section
        return value

    def __getitem__(self, name: str) -> Any:
        self._read(f"{self._key}.{name}")
        return self._value[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self._value else default

    def _whole(self) -> Any:
        self._read(self._key)
        return self._value

    def __contains__(self, name: object) -> bool:  # depends on that one entry only
        self._read(f"{self._key}.{name}")
        return name in self._value

    def __iter__(self) -> Any:
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())

    def items(self) -> Any:
        return self._whole().items()

    def keys(self) -> Any:
        return self._whole().keys()

    def values(self) -> Any:
        return self._whole().values()


def traced(params: Any) -> Any:
    """`params` itself, or a recorder of the keys read when SDD_PARAMS_TRACE names a folder."""
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return params
    Path(folder).mkdir(parents=True, exist_ok=True)
    # dvc repro names the stage in DVC_STAGE (evaluate_arm@sft); run by hand: the module and its argument
    stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem + (f"@{sys.argv[1]}" if len(sys.argv) > 1 else "")
    return _Recorder(params, "", Path(folder) / f"{stage}.keys")
