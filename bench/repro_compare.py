"""Compare two runs of the pipeline: which stage outputs are byte-identical, and how far the
headline metrics moved where they are not.

    cp dvc.lock /tmp/run1.lock && cp -r metrics /tmp/run1-metrics    # after the first `dvc repro`
    dvc repro -f                                                      # a second run of every stage
    python bench/repro_compare.py /tmp/run1.lock dvc.lock /tmp/run1-metrics metrics

Output hashes come from the two dvc.lock files (DVC's md5 of each file or folder); metrics from
the `*.headline.json` and detail JSON files of the two metrics folders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def outs(lock: Path) -> dict[str, dict[str, str]]:
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {name: {o["path"]: o.get("md5", "") for o in spec.get("outs", [])} for name, spec in stages.items()}


def flat(obj: object, prefix: str = "") -> dict[str, float]:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    if isinstance(obj, bool) or not isinstance(obj, int | float):
        return {}
    return {prefix.rstrip("."): float(obj)}


def main(lock_a: str, lock_b: str, metrics_a: str, metrics_b: str) -> None:
    a, b = outs(Path(lock_a)), outs(Path(lock_b))
    print("| stage | outputs identical | differing outputs |\n|---|---|---|")
    for stage in sorted(set(a) & set(b)):
        differ = sorted(p for p in a[stage] if a[stage].get(p) != b[stage].get(p))
        print(f"| `{stage}` | {'yes' if not differ else 'no'} | {', '.join(f'`{p}`' for p in differ)} |")
    print("\n| headline metric | run 1 | run 2 | difference |\n|---|---|---|---|")
    for path in sorted(Path(metrics_a).rglob("*.headline.json")):
        other = Path(metrics_b) / path.relative_to(metrics_a)
        if not other.is_file():
            continue
        x, y = flat(json.loads(path.read_text())), flat(json.loads(other.read_text()))
        for key in sorted(set(x) & set(y)):
            if x[key] != y[key]:
                name = f"{path.relative_to(metrics_a).with_suffix('').with_suffix('')}:{key}"
                print(f"| `{name}` | {x[key]:g} | {y[key]:g} | {y[key] - x[key]:+.4g} |")


if __name__ == "__main__":
    main(*sys.argv[1:5])
