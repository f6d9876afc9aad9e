"""Recipe-search reports: one queued `dvc exp` per search point, each with one arm, scored against the
untrained pruned model by its report's paired comparisons, written up from data committed beside the
report and re-checkable.

    python -m sdd.search write --exp search-lr2e-4 --exp search-lr6e-5 ... \\
        --out reports/studies/smollm2-135m-search.md --preset presets/smollm2-search.yaml --command "..."
    python -m sdd.search verify reports/studies/smollm2-135m-search

`write` reads each experiment's committed `params.yaml`, `metrics/report/report.json` and the arm's
`metrics/finetune/<arm>.json` from its git ref (refs/exps/...; no checkout), keeps the comparison
`<arm>-<report.start>` (difference and CI of every measure, from the experiment's own bootstrap
over items) into `<name>/search.json`, and renders the table from that file alone; `verify` renders it
again and fails on any difference. The per-item data of each point stays in its experiment (`dvc exp
pull` from the team's remote); the figures here are those of the experiments' reports, not recomputed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sdd.artifacts import write_json
from sdd.eval.fmt import diff_ci, pct

# (title, where in the comparison, scale, digits, better): the columns of the table, each a paired
# difference recovered - pruned with its 95% CI
COLUMNS = (
    ("Δ above-chance avg (points)", ("above_chance",), 100.0, 2, "higher"),
    ("Δ margin", ("margin",), 1.0, 3, "higher"),
    ("Δ gold NLL", ("measures", "gold_nll"), 1.0, 4, "lower"),
    ("Δ plain-text KL", ("measures", "plain_kl"), 1.0, 4, "lower"),
    ("Δ KL (chat)", ("fidelity", "kl"), 1.0, 4, "lower"),
)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def exp_ref(name: str) -> str:
    """The git ref of a named experiment (refs/exps/<..>/<baseline>/<name>)."""
    refs = [r for r in _git("for-each-ref", "--format=%(refname)", "refs/exps").split() if r.rsplit("/", 1)[-1] == name]
    if len(refs) != 1:
        raise SystemExit(f"experiment {name!r}: {len(refs)} refs under refs/exps (dvc exp list shows the names)")
    return refs[0]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def point(name: str) -> dict:
    """One search point from its experiment's ref: its finetune params, the arm's comparison with
    the start model, both models' rows and the arm's training record."""
    ref = exp_ref(name)
    params = yaml.safe_load(_git("show", f"{ref}:params.yaml"))
    report = json.loads(_git("show", f"{ref}:metrics/report/report.json"))
    (arm,) = params["finetune"]["arms"]
    start = params["report"].get("start", "pruned")
    train = json.loads(_git("show", f"{ref}:metrics/finetune/{arm}.json"))
    keep = (
        "steps",
        "train_rows",
        "tokens_seen",
        "val_original_loss",
        "val_loss",
        "wall_seconds",
        "trainable_parameters",
    )
    return {
        "name": name,
        "commit": _git("merge-base", ref, "HEAD").strip(),  # the code: where the experiment left this branch
        "finetune": _flat(params["finetune"]),
        "comparison": report["comparisons"][f"{arm}-{start}"],
        "models": {"arm": report["models"][arm], "start": report["models"][start]},
        "training": {k: train.get(k) for k in keep},
    }


def recipe_keys(points: list[dict]) -> list[str]:
    """The finetune keys whose value differs between the points: what the search varied."""
    keys = sorted({k for p in points for k in p["finetune"]})
    return [k for k in keys if len({json.dumps(p["finetune"].get(k)) for p in points}) > 1]


def _get(c: dict, where: tuple[str, ...]) -> dict | None:
    out: dict | None = c
    for key in where:
        out = (out or {}).get(key)
    return out


def _excludes_zero(c: dict | None, better: str) -> str:
    if not c or c.get("ci_low") is None:
        return ""
    if better == "higher":
        return " ✓" if c["ci_low"] > 0 else (" ✗" if c["ci_high"] < 0 else "")
    return " ✓" if c["ci_high"] < 0 else (" ✗" if c["ci_low"] > 0 else "")


def render(data: dict) -> str:
    points = data["points"]
    keys = recipe_keys(points)
    head = ["point", *[f"`{k.removeprefix('finetune.')}`" for k in keys], *[c[0] for c in COLUMNS]]
    head += ["recovery above chance (pruned)"]  # (val losses are left out: a kd arm's is its KD objective)
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        cells = [f"`{p['name']}`", *[f"{p['finetune'].get(k)}" for k in keys]]
        for _, where, scale, digits, better in COLUMNS:
            c = _get(p["comparison"], where)
            cells.append(diff_ci(c, scale, digits) + _excludes_zero(c, better))
        arm, start = p["models"]["arm"], p["models"]["start"]
        cells.append(f"{pct(arm.get('recovery_above_chance'))} ({pct(start.get('recovery_above_chance'))})")
        rows.append("| " + " | ".join(cells) + " |")
    commits = sorted({p["commit"] for p in points})
    lines = [f"# {data['title']}", "", data["summary"].strip(), "", *rows, ""]
    lines += [
        "Each Δ is the recovered model minus the untrained pruned model, paired over the same items (tasks,",
        "held-out rows, prompts), with the 95% bootstrap CI of the experiment's own report; ✓ the CI excludes 0",
        "in the better direction, ✗ in the worse. One seed per point: seed spread is the recipe study's job.",
        "",
        "## How it was run",
        "",
        f"- machine: {data['machine']}",
        f"- code: commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits)}",
        f"- command: `{data['command']}`",
        "- params that differ from `params.yaml` (the preset), before each point's own settings above:",
        "",
        "```yaml",
        data["preset"].strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def verify(folder: Path) -> int:
    from sdd.study import check_rendered

    text = render(json.loads((folder / "search.json").read_text(encoding="utf-8")))
    return check_rendered(folder.with_suffix(".md"), text, f"{folder}/search.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdd.search", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command_name", required=True)
    w = sub.add_parser("write", help="collect the search points beside the report and write it")
    w.add_argument("--exp", action="append", required=True)
    w.add_argument("--out", required=True, type=Path)
    w.add_argument("--preset", required=True)
    w.add_argument("--command", required=True)
    w.add_argument("--title", default="Recipe search")
    w.add_argument("--summary", default="")
    v = sub.add_parser("verify", help="render the report again from its committed data; fail on any difference")
    v.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command_name == "verify":
        return verify(args.folder)
    from sdd.study import machine

    m = machine()
    data = {
        "title": args.title,
        "summary": args.summary,
        "command": args.command,
        "machine": f"{m['device']}, {m['cores']} cores, {m['ram_gib']} GiB (flags: {', '.join(m['flags'])})",
        "preset": Path(args.preset).read_text(encoding="utf-8"),
        "points": [point(name) for name in args.exp],
    }
    folder = args.out.parent / args.out.stem
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "search.json", data)
    args.out.write_text(render(data), encoding="utf-8")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
