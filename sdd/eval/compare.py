"""One comparison of two models (or two recipes, each trained under several seeds): a - b on every
measure, each with a CI over seeds and items together, and the verdict.

    c = compare_models("sdd", "sft", evaluated, replicates, above, bootstrap=2000, confidence=0.95, seed=0)
    c["above_chance"]["difference"], c["verdict"]["claim"]

`evaluated` holds, per model, its per-item frames: `samples` (EVAL_SAMPLES: score and choice margin
per item), `fidelity` (per prompt) and `measures` (per held-out row: gold NLL, plain-text KL/NLL).
A side with replicates (arms that differ only in seed) is the recipe, averaged per item; every CI
resamples its seeds, then the items (sdd.eval.stats.hierarchical_bootstrap). Pure: frames in, dict out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from sdd.eval import stats

FIDELITY_KEYS = ["prompt_set", "id"]
MEASURE_KEYS = ["set", "id"]


@dataclass
class Evaluated:
    """One model's per-item results, as the report reads them."""

    samples: pd.DataFrame
    fidelity: pd.DataFrame | None = None
    measures: pd.DataFrame | None = None  # long: measure, set, id, tokens, sum
    summary: dict = field(default_factory=dict)  # the report's row for it (average, above-chance average)


def _measure_frames(frames: list[pd.DataFrame], measure: str) -> list[pd.DataFrame]:
    return [f[f["measure"] == measure][[*MEASURE_KEYS, "tokens", "sum"]] for f in frames]


def compare_models(
    a: str,
    b: str,
    evaluated: dict[str, Evaluated],
    replicates: dict[str, list[str]],
    above: list[str],
    bootstrap: int,
    confidence: float,
    seed: int,
) -> dict | None:
    """a - b on the average, the above-chance average, the choice margin, fidelity and the held-out
    measures; None when a model of either side was not evaluated."""
    groups = {side: [name, *replicates.get(name, [])] for side, name in (("a", a), ("b", b))}
    if not all(m in evaluated for m in groups["a"] + groups["b"]):
        return None
    side = {k: [evaluated[m] for m in g] for k, g in groups.items()}
    samples = {k: [e.samples for e in v] for k, v in side.items()}
    boot: dict = {"iterations": bootstrap, "confidence": confidence, "seed": seed}
    out = stats.hierarchical_bootstrap(samples["a"], samples["b"], **boot)
    if above:
        on = {k: [f[f["task"].isin(above)] for f in v] for k, v in samples.items()}
        out["above_chance"] = stats.hierarchical_bootstrap(on["a"], on["b"], **boot)
    if all("margin" in f.columns for f in samples["a"] + samples["b"]):
        tasks = lambda f: f["task"].isin(above or set(f["task"])) & f["margin"].notna()  # noqa: E731
        scored = {k: [f[tasks(f)] for f in v] for k, v in samples.items()}
        if all(len(f) for f in scored["a"] + scored["b"]):
            out["margin"] = stats.hierarchical_bootstrap(scored["a"], scored["b"], column="margin", **boot)
    if all(e.fidelity is not None for e in side["a"] + side["b"]):
        fid = {k: [e.fidelity for e in v] for k, v in side.items()}
        out["fidelity"] = stats.ratio_bootstrap(fid["a"], fid["b"], stats.FIDELITY_METRICS, FIDELITY_KEYS, **boot)
    if all(e.measures is not None and len(e.measures) for e in side["a"] + side["b"]):
        frames = {k: [e.measures for e in v if e.measures is not None] for k, v in side.items()}
        names = sorted(set.intersection(*(set(f["measure"]) for f in frames["a"] + frames["b"])))
        out["measures"] = {
            m: stats.ratio_bootstrap(
                _measure_frames(frames["a"], m), _measure_frames(frames["b"], m), {m: "sum"}, MEASURE_KEYS, **boot
            )[m]
            for m in names
        }
    out["seeds"] = groups
    out["per_seed"] = {
        key: {k: [e.summary.get(key) for e in v] for k, v in side.items()}
        for key in ("average", "average_above_chance")
    }
    out["verdict"] = verdict(out)
    return out


def _claim(c: dict | None) -> str:
    if not c or c.get("ci_low") is None:
        return "no CI"
    if c["ci_low"] > 0:
        return "a > b"
    if c["ci_high"] < 0:
        return "a < b"
    return "no difference shown"


def verdict(comparison: dict) -> dict:
    """Is a - b shown? On the above-chance average when there is one, else the whole average, and
    on the choice margin: a claim only where the CI over seeds and items excludes 0."""
    scope = "above_chance" if "above_chance" in comparison else "average"
    c = comparison["above_chance"] if scope == "above_chance" else comparison
    seeds = comparison["seeds"]
    return {
        "scope": scope,
        "difference": c["difference"],
        "claim": _claim(c),
        "margin_claim": _claim(comparison.get("margin")),
        "ci_excludes_zero": _claim(c) in ("a > b", "a < b"),
        "seeds": [len(seeds["a"]), len(seeds["b"])],
        "ci_over": "seeds and items" if max(len(seeds["a"]), len(seeds["b"])) > 1 else "items (one model a side)",
    }
