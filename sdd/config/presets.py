"""Turn a params preset file into `dvc exp run -S key=value` flags.

    dvc exp run $(python -m sdd.presets presets/leaderboard.yaml)

A preset is a YAML file shaped like params.yaml holding only the keys it changes; every leaf
becomes one `-S dotted.key=value` flag (values as compact JSON, which YAML reads back), so the
experiment records exactly what the preset changed and params.yaml itself stays untouched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def flags(preset: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in preset.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += flags(value, f"{dotted}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            if any(c.isspace() for c in text):
                raise ValueError(f"preset key {dotted}: value {text!r} has whitespace; it cannot pass through $(...)")
            out += ["-S", f"{dotted}={text}"]
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m sdd.presets <preset.yaml>")
    path = Path(argv[0])
    if not path.is_file():
        sys.exit(f"{path} not found; presets live in presets/")
    preset = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    print(" ".join(flags(preset)))


if __name__ == "__main__":
    main(sys.argv[1:])
