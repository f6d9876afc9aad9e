"""Every model the pipeline builds or reads, by name, derived from params in one place.

    from sdd.config.models import comparisons, drafts, evaluated, model_dirs, replicate_groups
    model_dirs(params)   # {"base": "base", "pruned": "pruned", "sft": "finetuned/sft", "sdd_wise": "merged/sdd_wise"}
    comparisons(params)  # [("sdd", "sft"), ("sft", "pruned"), ...]

A new fine-tuning arm or merge recipe is one entry in params.yaml: it is evaluated, speculated
with and compared without being listed again. The extra maps `evaluate.models` and
`speculate.drafts` add models that no stage of this project trains (base, pruned, your own);
`evaluate.skip` / `speculate.skip` narrow. Free functions, not section methods: the params trace
(sdd/config/trace.py) then records exactly the keys each one reads.
"""

from __future__ import annotations

from typing import Any, Literal

Kind = Literal["model", "arm", "merged"]
FAMILY = {"model": "", "arm": "_arm", "merged": "_merged"}  # dvc.yaml stage family suffix per kind


def model_dirs(params: Any) -> dict[str, str]:
    """name -> directory under paths.models: `evaluate.models`, then every arm, then every recipe."""
    dirs = dict(params.evaluate.models)
    dirs |= {arm: f"finetuned/{arm}" for arm in params.finetune.arms}
    dirs |= {recipe: f"merged/{recipe}" for recipe in params.merge.recipes}
    return dirs


def model_dir(params: Any, name: str, kind: Kind) -> str:
    """One model's directory under paths.models, reading only its own entry."""
    from sdd.errors import require

    if kind == "arm":
        require(name, params.finetune.arms, "finetune.arms")
        return f"finetuned/{name}"
    if kind == "merged":
        require(name, params.merge.recipes, "merge.recipes")
        return f"merged/{name}"
    require(name, params.evaluate.models, "evaluate.models")
    return params.evaluate.models[name]


def draft_dir(params: Any, name: str, kind: Kind) -> str:
    """A draft's directory: as `model_dir`, but the extra drafts come from `speculate.drafts`."""
    from sdd.errors import require

    if kind != "model":
        return model_dir(params, name, kind)
    require(name, params.speculate.drafts, "speculate.drafts")
    return params.speculate.drafts[name]


def stage_name(stage: str, name: str, kind: Kind) -> str:
    """The dvc.yaml stage that evaluates / speculates with a model: evaluate@base, evaluate_arm@sft, ..."""
    return f"{stage}{FAMILY[kind]}@{name}"


def evaluated(params: Any) -> list[str]:
    """The models the report reads: every model of `model_dirs` not in `evaluate.skip`."""
    skip = set(params.evaluate.skip)
    return [name for name in model_dirs(params) if name not in skip]


def drafts(params: Any) -> dict[str, str]:
    """name -> directory of every draft: `speculate.drafts`, every arm and recipe, minus `speculate.skip`."""
    out = dict(params.speculate.drafts)
    out |= {n: d for n, d in model_dirs(params).items() if d.startswith(("finetuned/", "merged/"))}
    return {n: d for n, d in out.items() if n not in set(params.speculate.skip)}


def controls(params: Any) -> dict[str, str]:
    """Recovered model -> its declared control (`control` of an arm or a merge recipe)."""
    out = {arm: spec.control for arm, spec in params.finetune.arms.items() if spec.control}
    out |= {r: spec.control for r, spec in params.merge.recipes.items() if spec.control}
    return out


def replicate_groups(params: Any) -> dict[str, list[str]]:
    """Arms that differ only in `seed` are one recipe: the first arm of each group (in params
    order) -> the other arms. Groups of one are left out."""
    groups: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for arm, spec in params.finetune.arms.items():
        recipe = repr(sorted(spec.model_dump(exclude={"seed", "control"}).items()))
        if recipe in seen:
            groups[seen[recipe]].append(arm)
        else:
            seen[recipe] = arm
            groups[arm] = []
    return {head: rest for head, rest in groups.items() if rest}


def comparisons(params: Any) -> list[tuple[str, str]]:
    """The (a, b) pairs the report compares: each recovered model against its control and against
    `report.start` (the untrained pruned model), then `report.compare`; replicates of a recipe
    are averaged into their group's first arm, so they are not compared on their own."""
    names = set(evaluated(params))
    replicas = {r for rest in replicate_groups(params).values() for r in rest}
    recovered = [
        n for n, d in model_dirs(params).items() if d.startswith(("finetuned/", "merged/")) and n not in replicas
    ]
    pairs = [(n, c) for n, c in controls(params).items() if n in recovered]
    pairs += [(n, params.report.start) for n in recovered]
    pairs += [tuple(p) for p in params.report.compare]
    out: list[tuple[str, str]] = []
    for a, b in pairs:
        if a in names and b in names and a != b and (a, b) not in out:
            out.append((a, b))
    return out
