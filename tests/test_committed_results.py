"""The committed results (dvc.lock, metrics/, reports/) come from a `dvc repro` of the committed code:
`dvc status` on the repository finds no stage whose command, code, params or committed outputs
differ from what dvc.lock recorded. Data outputs and model folders are not in git, so their absence
in a fresh clone is not a difference; everything git holds must match."""

from __future__ import annotations

import json

from conftest import REPO, run_dvc

ALWAYS_RUN = {"sources"}  # always_changed: it fingerprints the outside inputs on every repro


def in_git(path: str) -> bool:
    """Whether git holds the path: code, configs, metrics, reports and the source fingerprints do; the
    data and model folders under data/ are DVC's (cached, absent from a fresh clone)."""
    return not path.startswith("data/") or path.startswith("data/sources")


def test_every_stage_in_dvc_yaml_is_locked_with_its_command():
    import yaml

    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    listed = set(run_dvc(REPO, "stage", "list", "--name-only").stdout.split())
    assert listed == set(lock), f"in dvc.yaml, not locked: {listed - set(lock)}; locked, gone: {set(lock) - listed}"
    assert not [name for name, stage in lock.items() if stage["cmd"] != stage["cmd"].strip()], "a cmd with spaces"


def test_committed_lock_matches_the_code_params_and_committed_outputs():
    status = json.loads(run_dvc(REPO, "status", "--json").stdout or "{}")
    problems = []
    for stage, changes in status.items():
        if stage.split(":")[-1] in ALWAYS_RUN:
            continue
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed"
                problems.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                if kind == "changed params":
                    problems.append(f"{stage}: params {paths}")
                elif kind in ("changed deps", "changed outs"):
                    # a path git holds (code, configs, committed metrics and reports) must be unchanged;
                    # data and models are not in a fresh clone
                    problems += [f"{stage}: {kind} {p} {s}" for p, s in paths.items() if in_git(p)]
    assert not problems, "dvc.lock is not from a dvc repro of this code: run `dvc repro` and commit:\n" + "\n".join(
        problems
    )
