"""Turn a params preset file into `dvc exp run -S key=value` flags.

    dvc exp run $(python -m sdd.presets presets/leaderboard.yaml)

A preset is a YAML file shaped like params.yaml holding only the keys it changes; every leaf
becomes one `-S dotted.key=value` flag (values as compact JSON, which YAML reads back), so the
experiment records exactly what the preset changed and params.yaml itself stays untouched.
A key params.yaml does not have (a new arm) becomes `-S +key=value` (DVC's Hydra syntax adds it
only with `+`), and the preset's top-level `_delete: [dotted.key, ...]` becomes `-S ~key` (removes
an entry, e.g. an arm the preset does not train). A preset may build on another one: `_on: other.yaml`
(a file beside it) is applied first, then this preset's keys over it (its `_delete` entries too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def flags(preset: dict, prefix: str = "", params: dict | None = None, spaces_ok: bool = False) -> list[str]:
    """`-S` flags for a preset; `params` (the params.yaml it applies to) marks new keys with `+`
    (None: every key is taken as existing)."""
    out = [f for key in preset.get("_delete", []) if not prefix for f in ("-S", f"~{key}")]
    for key, value in preset.items():
        if key == "_delete" and not prefix:
            continue
        dotted = f"{prefix}{key}"
        new = params is not None and key not in params
        inner = None if params is None else params.get(key, {})
        if isinstance(value, dict) and value:
            out += flags(value, f"{dotted}.", inner if isinstance(inner, dict) else {}, spaces_ok)
        else:
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            if any(c.isspace() for c in text) and not spaces_ok:
                raise ValueError(
                    f"preset key {dotted}: value {text!r} has whitespace; it cannot pass through $(...): "
                    "use `python -m sdd.presets <preset> --run [dvc exp run args]`"
                )
            if any(c.isspace() for c in text):
                text = json.dumps(text)  # Hydra reads a quoted string back whole
            out += ["-S", f"{'+' if new else ''}{dotted}={text}"]
    return out


def _deep_merge(into: dict, changes: dict) -> dict:
    """`into` with `changes` over it: nested maps merged key by key, anything else (an empty map too) replaced."""
    import copy

    out = dict(into)
    for key, value in changes.items():
        nested = isinstance(value, dict) and value and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if nested else copy.deepcopy(value)
    return out


def apply_preset(params: dict, preset: dict) -> dict:
    """params.yaml's content with the preset applied, as `dvc exp run` applies its flags: leaves set,
    new keys added, `_delete` keys removed (for validating a preset without running anything)."""
    return _deep_merge(deleted(params, preset), {k: v for k, v in preset.items() if k != "_delete"})


def deleted(params: dict, preset: dict) -> dict:
    """A copy of params.yaml's content without the preset's `_delete` keys."""
    import copy

    out = copy.deepcopy(params)
    for dotted in preset.get("_delete", []):
        *parents, last = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict) or last not in node:
            raise ValueError(f"preset _delete: {dotted} is not in params.yaml")
        del node[last]
    return out


def load_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A preset file as one dict: the preset it is `_on` first (recursively), then its own keys."""
    if path.resolve() in seen:
        raise ValueError(f"{path}: `_on` makes a cycle: {' -> '.join(str(p) for p in (*seen, path.resolve()))}")
    preset = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base_name = preset.pop("_on", None)
    if base_name is None:
        return preset
    base_path = path.parent / base_name
    if not base_path.is_file():
        raise ValueError(f"{path}: `_on: {base_name}` names no file beside it")
    base = load_preset(base_path, (*seen, path.resolve()))
    deletes = [*base.pop("_delete", []), *preset.pop("_delete", [])]
    merged = _deep_merge(base, preset)
    return {"_delete": deletes, **merged} if deletes else merged


USAGE = """usage: python -m sdd.presets <preset.yaml> [--run DVC_EXP_RUN_ARGS...]
  prints the `dvc exp run` flags (for $(...)), or with --run starts `dvc exp run <flags> DVC_EXP_RUN_ARGS`
  itself (needed when a value has spaces, e.g. launch prefixes). Run it in the project root."""


def main(argv: list[str]) -> None:
    if not argv or (len(argv) > 1 and argv[1] != "--run"):
        sys.exit(USAGE)
    path = Path(argv[0])
    if not path.is_file():
        sys.exit(f"{path} not found; presets live in presets/")
    try:
        preset = load_preset(path)
    except ValueError as err:
        sys.exit(str(err))
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8")) if Path("params.yaml").is_file() else None
    if params is not None:  # the preset must give valid params before any stage starts
        from sdd.config.params import Params

        try:
            Params.model_validate(apply_preset(params, preset))
        except ValueError as err:
            sys.exit(f"{path}: the params it gives are invalid:\n{err}")
    run = len(argv) > 1
    try:
        # `+` marks keys missing once `_delete` has run: an arm deleted and defined anew is added
        out = flags(preset, params=deleted(params, preset) if params is not None else {}, spaces_ok=run)
    except ValueError as err:
        sys.exit(f"{path}: {err}")
    if run:
        import subprocess

        sys.exit(subprocess.call(["dvc", "exp", "run", *out, *argv[2:]]))
    print(" ".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
