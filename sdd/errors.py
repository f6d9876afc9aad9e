"""User errors: bad params, data or models. A stage prints them plainly and exits 2 (no traceback);
any other exception is a bug and keeps its traceback (`sdd.runtime.run_stage`).

    raise InputError(f"n_layers={n} but the model has {L} layers; choose 1..{L - 1}")
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Collection, Iterable
from typing import Any

from pydantic import BaseModel


class InputError(ValueError):
    """Bad input a user can fix: the message names the file, key or row and says how."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_names(kind: str, names: Iterable[str]) -> None:
    """Names of datasets, arms, recipes, models and drafts become file and folder names."""
    bad = [name for name in names if not re.fullmatch(r"[A-Za-z0-9_-]+", name)]
    if bad:
        raise ValueError(f"{kind} names {bad} must use letters, digits, '_' or '-' (they become file and folder names)")


class MissingInput(InputError, FileNotFoundError):
    """An input file or folder that is not there: the message says which stage writes it."""


def format_validation_errors(path: object, err: Any, root: type[BaseModel]) -> str:
    """A pydantic ValidationError of `root` as one line per key, with allowed keys and close matches."""
    lines = [f"{path}: {err.error_count()} invalid value(s); fix these keys:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            parent = _model_at(root, e["loc"][:-1])
            hint = did_you_mean(str(e["loc"][-1]), parent.model_fields) if parent else ""
            allowed = f"; allowed keys: {sorted(parent.model_fields)}" if parent else ""
            lines.append(f"  - {key}: unknown key{hint}{allowed}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            message = str(e["msg"]).removeprefix("Value error, ")
            if e["type"] == "literal_error" and isinstance(got, str):  # a typo among fixed choices
                shown += did_you_mean(got, re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", ""))))
            lines.append(f"  - {key}: {message}{shown}")
    return "\n".join(lines)


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (to list its allowed keys), if any."""
    model, parts = root, list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:  # a map of named entries: skip the name
            if not parts:
                return None
            parts.pop(0)
            annotation = typing.get_args(annotation)[1]
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and parts:  # a tagged union: the tag
            tag = str(parts.pop(0))
            members = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = next(
                (
                    m
                    for m in members
                    if m.model_fields.get("method") and tag in typing.get_args(m.model_fields["method"].annotation)
                ),
                None,
            )
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def require(name: str, choices: Collection[str], where: str) -> str:
    """`name` if it is one of `choices` (the keys of params section `where`), else an InputError
    with the closest match and every choice."""
    if name not in choices:  # a membership test reads only that entry (see sdd/config/trace.py)
        known = sorted(choices)
        raise InputError(f"{name!r} is not in {where}{did_you_mean(name, known)}; {where} has {known}")
    return name
