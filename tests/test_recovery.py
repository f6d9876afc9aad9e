"""Recovery math and the paired bootstrap on hand-made per-sample tables with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from transformers import LlamaConfig

from sdd.eval import compare, markdown, report, stats
from sdd.eval.compare import Evaluated

BOOT = {"iterations": 500, "confidence": 0.95, "seed": 0}


def summarise(evals, samples, pairs, fidelity=None, replicates=None, prune=None, start="pruned"):
    evaluated = {m: Evaluated(samples[m], (fidelity or {}).get(m)) for m in evals}
    inputs = report.ReportInputs(prune=prune)
    return report.summarise(evaluated, evals, "base", start, pairs, replicates or {}, BOOT, inputs)


def table(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["task", "subtask", "doc_id", "score", "chance"])


def test_task_score_is_macro_average_over_subtasks():
    # Subject a: 2 of 2 right; subject b: 0 of 2 right plus one more right -> 1/3.
    rows = table(
        [
            ("mmlu", "a", 0, 1, 0.25),
            ("mmlu", "a", 1, 1, 0.25),
            ("mmlu", "b", 0, 0, 0.25),
            ("mmlu", "b", 1, 0, 0.25),
            ("mmlu", "b", 2, 1, 0.25),
        ]
    )
    s = stats.task_score(rows)
    assert s.score == pytest.approx((1.0 + 1 / 3) / 2)
    assert s.chance == pytest.approx(0.25) and s.n == 5
    var = np.var([1, 1, 0, 0, 1], ddof=1)
    assert s.stderr == pytest.approx(math.sqrt(var / 2 + var / 3) / 2)


def test_single_subtask_stderr_is_the_usual_one():
    scores = [1, 0, 1, 1, 0, 1, 0, 1]
    s = stats.task_score(table([("arc", "arc", i, v, 0.25) for i, v in enumerate(scores)]))
    assert s.score == pytest.approx(0.625)
    assert s.stderr == pytest.approx(np.std(scores, ddof=1) / math.sqrt(8))


def test_average_recovery_and_chance_normalised():
    base = {"arc": stats.Score(0.6, 0, 0.25, 10), "wino": stats.Score(0.7, 0, 0.5, 10)}
    model = {"arc": stats.Score(0.4, 0, 0.25, 10), "wino": stats.Score(0.6, 0, 0.5, 10)}
    assert stats.average(base) == pytest.approx(0.65)
    assert stats.recovery(stats.average(model), stats.average(base)) == pytest.approx(0.5 / 0.65)
    assert stats.chance_normalised(0.4, 0.6, 0.25) == pytest.approx(0.15 / 0.35)
    # Over the average: (0.5 - 0.375) / (0.65 - 0.375)
    assert stats.recovery_chance_normalised(model, base) == pytest.approx(0.125 / 0.275)
    # A model reduced to guessing keeps a large raw recovery but 0 chance-normalised stats.
    chance = {"arc": stats.Score(0.25, 0, 0.25, 10), "wino": stats.Score(0.5, 0, 0.5, 10)}
    assert stats.recovery(stats.average(chance), stats.average(base)) == pytest.approx(0.375 / 0.65)
    assert stats.recovery_chance_normalised(chance, base) == pytest.approx(0.0)


def test_chance_normalised_undefined_when_base_at_chance():
    assert math.isnan(stats.chance_normalised(0.3, 0.25, 0.25))
    with pytest.raises(ValueError, match="positive baseline"):
        stats.recovery(0.5, 0.0)


def test_paired_bootstrap_constant_difference_has_a_point_interval():
    # Every item's difference is 0.5 (MC2-like fractional scores), so every resample gives 0.5.
    a = table([("t", "t", i, 0.75, 0.25) for i in range(10)])
    b = table([("t", "t", i, 0.25, 0.25) for i in range(10)])
    out = stats.paired_bootstrap(a, b, iterations=500, confidence=0.95, seed=0)
    assert out["difference"] == pytest.approx(0.5)
    assert out["ci_low"] == pytest.approx(0.5) and out["ci_high"] == pytest.approx(0.5)
    assert out["paired_items"] == 10 and out["unpaired_items"] == 0


def test_paired_bootstrap_known_interval_and_weights():
    # Task x (5 items): a right on all, b on 2 -> diffs {0,0,1,1,1}, +0.6. Task y (2 subjects of 5
    # items): identical -> 0. Average difference = (0.6 + 0) / 2 = 0.3. Every subtask has 5 items,
    # so items are resampled within each; x's replicate mean is Binomial(5, 0.6) / 5: P(0) = 0.010
    # and P(<=1) = 0.087 put the 2.5% quantile at 1/5, P(5) = 0.078 the 97.5% one at 5/5.
    a = table(
        [("x", "x", i, 1, 0.5) for i in range(5)]
        + [("y", s, i, v, 0.5) for s in "pq" for i, v in enumerate([1, 0, 1, 0, 0])]
    )
    b = table(
        [("x", "x", i, v, 0.5) for i, v in enumerate([1, 1, 0, 0, 0])]
        + [("y", s, i, v, 0.5) for s in "pq" for i, v in enumerate([1, 0, 1, 0, 0])]
    )
    out = stats.paired_bootstrap(a, b, iterations=4000, confidence=0.95, seed=1)
    assert out["difference"] == pytest.approx(0.3)
    assert out["resampled_by"] == {"x": "subtask", "y": "subtask"} and out["ci_unavailable"] is None
    # Half-weighted task x: [0.2 / 2, 1.0 / 2].
    assert out["ci_low"] == pytest.approx(0.1) and out["ci_high"] == pytest.approx(0.5)
    # Same seed, same answer.
    assert stats.paired_bootstrap(a, b, 4000, 0.95, 1) == out


def test_paired_bootstrap_pools_subjects_of_two_items():
    # MMLU-like: 6 subjects x 2 items; 3 subjects with diffs {1, 1}, 3 with {0, 0}. Within a subject
    # both items agree, so resampling inside subjects would give the point interval [0.5, 0.5].
    # The task's 12 items are resampled jointly instead (equal weights: the plain mean), a
    # Binomial(12, 0.5) / 12: P(<=2) = 79/4096 = 0.019 and P(<=3) = 0.073 put the 2.5% quantile at
    # 3/12, and by symmetry the 97.5% one at 9/12.
    a = table([("mmlu", s, i, 1 if s in "abc" else 0, 0.25) for s in "abcdef" for i in range(2)])
    b = table([("mmlu", s, i, 0, 0.25) for s in "abcdef" for i in range(2)])
    out = stats.paired_bootstrap(a, b, iterations=20000, confidence=0.95, seed=0)
    assert out["resampled_by"] == {"mmlu": "task"}
    assert out["difference"] == pytest.approx(0.5)
    assert out["ci_low"] == pytest.approx(0.25) and out["ci_high"] == pytest.approx(0.75)


def test_paired_bootstrap_pooled_items_keep_their_subtask_weights():
    # Subtask p: 1 item, diff 1; subtask q: 4 items, diff 0. Macro difference (1 + 0) / 2 = 0.5,
    # item weights 1/2 (p) and 1/8 (q). Pooled over the 5 items, a replicate with k draws of the p
    # item is (k/2) / (k/2 + (5 - k)/8) = 4k / (3k + 5), k ~ Binomial(5, 0.2): P(k=0) = 0.33 -> 0.0 is
    # the 2.5% quantile; P(k<=2) = 0.942, P(k<=3) = 0.993 -> the 97.5% one is k=3: 12/14 = 6/7.
    a = table([("t", "p", 0, 1, 0.5)] + [("t", "q", i, 0, 0.5) for i in range(4)])
    b = table([("t", "p", 0, 0, 0.5)] + [("t", "q", i, 0, 0.5) for i in range(4)])
    out = stats.paired_bootstrap(a, b, iterations=20000, confidence=0.95, seed=0)
    assert out["resampled_by"] == {"t": "task"}
    assert out["difference"] == pytest.approx(0.5)
    assert out["ci_low"] == pytest.approx(0.0) and out["ci_high"] == pytest.approx(6 / 7)
    # A constant difference stays a point interval however the weights are drawn.
    a = table([("t", "p", 0, 0.75, 0.5)] + [("t", "q", i, 0.75, 0.5) for i in range(5)])
    b = table([("t", "p", 0, 0.25, 0.5)] + [("t", "q", i, 0.25, 0.5) for i in range(5)])
    out = stats.paired_bootstrap(a, b, iterations=500, confidence=0.95, seed=0)
    assert out["ci_low"] == pytest.approx(0.5) and out["ci_high"] == pytest.approx(0.5)


def test_paired_bootstrap_has_no_ci_when_a_task_has_too_few_items():
    # GSM8k with limit 1: one item, whose difference (1 here) no resample can vary. ARC: 10 items.
    a = table([("arc", "arc", i, 1, 0.25) for i in range(10)] + [("gsm8k", "gsm8k", 0, 1, 0.0)])
    b = table([("arc", "arc", i, i % 2, 0.25) for i in range(10)] + [("gsm8k", "gsm8k", 0, 0, 0.0)])
    out = stats.paired_bootstrap(a, b, iterations=500, confidence=0.95, seed=0)
    assert out["difference"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["ci_low"] is None and out["ci_high"] is None
    assert out["ci_unavailable"] == (
        "too few items to resample: gsm8k (1 paired items); a task needs at least 5 (raise evaluate.tasks.<task>.limit)"
    )
    assert out["resampled_by"] == {"arc": "subtask", "gsm8k": None}


def test_paired_bootstrap_counts_unpaired_items_on_both_sides():
    # a has docs 0-6, b has docs 2-9: 5 shared, 2 only in a (0, 1), 3 only in b (7, 8, 9).
    a = table([("t", "t", i, 1, 0.5) for i in range(7)])
    b = table([("t", "t", i, 0, 0.5) for i in range(2, 10)])
    out = stats.paired_bootstrap(a, b, 200, 0.9, 0)
    assert out["paired_items"] == 5 and out["unpaired_items"] == 5
    assert out["difference"] == pytest.approx(1.0)


def test_paired_bootstrap_pairs_only_shared_items():
    a = table([("t", "t", i, 1, 0.5) for i in range(5)])
    b = table([("t", "t", i, 0, 0.5) for i in range(3)])
    out = stats.paired_bootstrap(a, b, 200, 0.9, 0)
    assert out["paired_items"] == 3 and out["unpaired_items"] == 2 and out["difference"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="share no evaluated items"):
        stats.paired_bootstrap(a, table([("u", "u", 0, 1, 0.5)]), 200, 0.9, 0)


SMOLLM2 = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
)


def config_json(num_layers: int) -> dict:
    """What save_pretrained writes to config.json for SmolLM2-135M's shape at `num_layers`."""
    return json.loads(LlamaConfig(**{**SMOLLM2, "num_hidden_layers": num_layers}).to_json_string())


SETTINGS = {
    "lm_eval_version": "0.4",
    "backend": "hf",
    "dtype": "float32",
    "batch_size": 1,
    "chat_template": False,
    "seed": 0,
}


def evaluation(model_dir: str, score: float, config: dict) -> dict:
    task = {"score": score, "stderr": 0.1, "chance": 0.25, "n": 10, "shots": 0, "limit": 10, "fewshot_split": "x"}
    return {
        "model_dir": model_dir,
        "config": config,
        "tasks": {"arc_challenge": task, "gsm8k": {**task, "chance": 0.0, "n": 1, "limit": 1}},
        "fidelity": {"kl": 0.1, "top1_agreement": 0.9, "perplexity": 2.0},
        "settings": SETTINGS,
    }


def test_summary_reads_each_models_size_from_its_own_config():
    # base: SmolLM2-135M (30 layers); pruned and sft: 24 layers; other: 26 layers, not a descendant
    # of the pruned checkpoint. A layer holds 3,540,096 parameters (3,538,944 of them matmul weights),
    # the tied embedding / LM head 28,311,552, the final norm 576: 30 layers = 134,515,008 parameters
    # and 2 * (30 * 3,538,944 + 28,311,552) = 268,959,744 FLOPs per token.
    layers = {"base": 30, "pruned": 24, "sft": 24, "other": 26}
    evals = {name: evaluation(f"data/models/{name}", 0.5, config_json(n)) for name, n in layers.items()}
    rows = [("arc_challenge", "arc_challenge", i, i % 2, 0.25) for i in range(10)] + [("gsm8k", "gsm8k", 0, 1, 0.0)]
    samples = {name: table(rows) for name in layers}
    prune = {"removed_layers": list(range(13, 19)), "params_reduction_pct": 15.79, "flops_reduction_pct": 15.79}
    out = summarise(evals, samples, [("sft", "pruned"), ("sft", "other")], prune=prune)
    size = {n: (m["parameters"], m["flops_per_token"]) for n, m in out["models"].items()}
    assert size == {
        "base": (134_515_008, 268_959_744),
        "pruned": (113_274_432, 226_492_416),
        "sft": (113_274_432, 226_492_416),
        "other": (134_515_008 - 4 * 3_540_096, 268_959_744 - 2 * 4 * 3_538_944),
    }
    text = markdown.markdown(out)
    assert "| `other` | 120.4 | 0.241 |" in text
    assert "+0.00 (no CI)" in text  # gsm8k has one item: no CI for the average
    assert "15.8% fewer (unique) parameters, 15.8% fewer forward FLOPs per token" in text
    head = report.headline(out)
    assert "sft-pruned" not in head and head["sft-other"] == {"difference": 0.0}  # only comparisons with others
    assert head["sft"] == {"recovery": 1.0, "kl": 0.1} and "base" not in head


def test_above_chance_keeps_only_tasks_the_baseline_clearly_beats():
    base = {
        "arc_challenge": stats.Score(0.40, 0.02, 0.25, 500),  # 7.5 stderr above chance
        "winogrande": stats.Score(0.51, 0.02, 0.50, 500),  # at chance
        "mmlu": stats.Score(0.27, 0.01, 0.25, 600),  # exactly 2 stderr above: kept
        "gsm8k": stats.Score(1.0, float("nan"), 0.0, 1),  # one item: no stderr, not counted
        "hellaswag": stats.Score(0.0, 0.0, 0.0, 8),  # all wrong with chance 0: at chance, not above
    }
    assert stats.above_chance(base) == ["arc_challenge", "mmlu"]
    assert stats.above_chance(base, z=3.0) == ["arc_challenge"]


def test_report_compares_over_the_above_chance_tasks_too():
    rng = np.random.default_rng(0)

    def frame(model: str, p_arc: float, p_wino: float) -> pd.DataFrame:
        rows = [
            {"model": model, "task": task, "subtask": task, "doc_id": i, "score": float(rng.random() < p), "chance": c}
            for task, p, c in (("arc_challenge", p_arc, 0.25), ("winogrande", p_wino, 0.5))
            for i in range(200)
        ]
        return pd.DataFrame(rows)

    samples = {"base": frame("base", 0.6, 0.5), "a": frame("a", 0.55, 0.5), "b": frame("b", 0.45, 0.5)}

    def evaluation(df: pd.DataFrame) -> dict:
        scores = stats.task_scores(df)
        return {
            "tasks": {t: vars(s) for t, s in scores.items()},
            "fidelity": {"kl": 0.1, "top1_agreement": 0.9, "perplexity": 2.0},
            "settings": SETTINGS,
        }

    evals = {m: evaluation(df) for m, df in samples.items()}
    for ev in evals.values():
        for t in ev["tasks"].values():
            t.update(shots=0, limit=200, fewshot_split="validation")
    summary = summarise(evals, samples, [("a", "b")])
    assert summary["above_chance_tasks"] == ["arc_challenge"]
    pair = summary["comparisons"]["a-b"]
    assert (
        set(pair["above_chance"]["resampled_by"]) == {"arc_challenge"} and pair["above_chance"]["paired_items"] == 200
    )
    arc = (
        samples["a"].query("task == 'arc_challenge'")["score"].mean()
        - samples["b"].query("task == 'arc_challenge'")["score"].mean()
    )
    assert pair["above_chance"]["difference"] == pytest.approx(arc)
    assert summary["models"]["a"]["average_above_chance"] == pytest.approx(
        samples["a"].query("task == 'arc_challenge'")["score"].mean()
    )
    text = markdown.markdown(summary)
    assert "above chance on (arc_challenge)" in text and "| `a` − `b` | a; b |" in text
    assert report.headline(summary)["a-b"]["difference"] == pytest.approx(arc, abs=1e-4)  # the above-chance one


def fidelity_frame(kl: list[float], top1: list[float], nll: list[float], tokens: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_set": ["p"] * len(kl),
            "id": [str(i) for i in range(len(kl))],
            "tokens": tokens,
            "kl_sum": kl,
            "top1_sum": top1,
            "nll_sum": nll,
            "ref_nll_sum": nll,
        }
    )


def test_paired_fidelity_bootstrap_has_the_token_weighted_difference_and_a_paired_ci():
    tokens = [10, 30, 20, 40, 50, 10]
    a = fidelity_frame([1, 3, 2, 4, 5, 1], [9, 27, 18, 36, 45, 9], [5, 15, 10, 20, 25, 5], tokens)
    # b: every prompt's KL sum higher by exactly 0.5 per token, agreement lower by 0.1 per token
    b = fidelity_frame(
        [k + 0.5 * t for k, t in zip([1, 3, 2, 4, 5, 1], tokens)],
        [x - 0.1 * t for x, t in zip([9, 27, 18, 36, 45, 9], tokens)],
        [5, 15, 10, 20, 25, 5],
        tokens,
    )
    out = stats.paired_fidelity_bootstrap(a, b, iterations=400, confidence=0.95, seed=0)
    assert out["kl"]["a"] == pytest.approx(16 / 160) and out["kl"]["difference"] == pytest.approx(-0.5)
    # a constant per-token shift survives every resample: the paired CI collapses onto it
    assert out["kl"]["ci_low"] == pytest.approx(-0.5) and out["kl"]["ci_high"] == pytest.approx(-0.5)
    assert out["top1_agreement"]["difference"] == pytest.approx(0.1)
    assert out["perplexity"]["a"] == pytest.approx(math.exp(0.5)) and out["perplexity"]["difference"] == 0
    assert out["kl"]["prompts"] == 6
    # unpaired noise: the CI is wide and covers the true difference 0
    rng = np.random.default_rng(1)
    noisy = [fidelity_frame(list(rng.random(60) * 20), [5.0] * 60, [5.0] * 60, [20] * 60) for _ in range(2)]
    wide = stats.paired_fidelity_bootstrap(*noisy, iterations=1000, confidence=0.95, seed=0)["kl"]
    assert wide["ci_low"] < wide["difference"] < wide["ci_high"] and wide["ci_high"] - wide["ci_low"] > 0.1
    with pytest.raises(stats.InputError, match="share no prompts"):
        stats.paired_fidelity_bootstrap(a, b.assign(prompt_set="q"), 100, 0.95, 0)
    few = stats.paired_fidelity_bootstrap(a.head(4), b.head(4), 100, 0.95, 0)["kl"]  # too few to resample
    assert (
        few["ci_low"] is None
        and "4 paired prompts" in few["ci_unavailable"]
        and few["difference"] == pytest.approx(-0.5)
    )


def test_mean_over_seeds_averages_each_item_over_the_replicates():
    one = table([("arc", "arc", 0, 1.0, 0.25), ("arc", "arc", 1, 0.0, 0.25), ("arc", "arc", 2, 1.0, 0.25)])
    two = table([("arc", "arc", 0, 0.0, 0.25), ("arc", "arc", 1, 0.0, 0.25)])  # item 2 missing
    mean = stats.mean_over_seeds([one, two], ["task", "subtask", "doc_id"], ["score"])
    assert mean.sort_values("doc_id")["score"].tolist() == [0.5, 0.0]
    assert stats.mean_over_seeds([one], ["task", "subtask", "doc_id"], ["score"]) is one


def test_a_difference_is_claimed_only_where_the_ci_over_seeds_and_items_excludes_zero():
    def comparison(diff, low, high, seeds=1, margin=None):
        c = {"difference": diff, "ci_low": low, "ci_high": high, "seeds": {"a": ["a"] * seeds, "b": ["b"] * seeds}}
        return c | ({"margin": margin} if margin else {})

    shown = compare.verdict(comparison(0.03, 0.01, 0.05, seeds=3))
    assert shown["claim"] == "a > b" and shown["ci_over"] == "seeds and items" and shown["seeds"] == [3, 3]
    assert compare.verdict(comparison(-0.03, -0.05, 0.01))["claim"] == "no difference shown"
    lower = compare.verdict(comparison(-0.03, -0.05, -0.01, margin={"difference": -1, "ci_low": -2, "ci_high": -0.5}))
    assert lower["claim"] == "a < b" and lower["margin_claim"] == "a < b" and lower["ci_over"].startswith("items")
    assert compare.verdict(comparison(0.0, None, None))["claim"] == "no CI"


def test_report_pairs_seed_averaged_replicates_and_their_fidelity():
    rng = np.random.default_rng(0)

    def frame(p: float) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"task": "arc_challenge", "subtask": "arc_challenge", "doc_id": i, "score": float(rng.random() < p)}
                | {"chance": 0.25}
                for i in range(300)
            ]
        )

    samples = {"base": frame(0.6), "a": frame(0.55), "a_s1": frame(0.56), "b": frame(0.45), "b_s1": frame(0.44)}
    kl = {"base": 0.0, "a": 0.2, "a_s1": 0.25, "b": 0.4, "b_s1": 0.45}
    fid = {m: fidelity_frame([k * 10] * 40, [8.0] * 40, [5.0] * 40, [10] * 40) for m, k in kl.items()}
    evals = {
        m: {
            "tasks": {
                t: vars(s) | {"shots": 0, "limit": 300, "fewshot_split": "x"} for t, s in stats.task_scores(df).items()
            },
            "fidelity": {"kl": kl[m], "top1_agreement": 0.8, "perplexity": 1.6},
            "settings": SETTINGS,
        }
        for m, df in samples.items()
    }
    summary = summarise(evals, samples, [("a", "b")], fidelity=fid, replicates={"a": ["a_s1"], "b": ["b_s1"]})
    pair = summary["comparisons"]["a-b"]
    mean = lambda *ms: np.mean([samples[m]["score"].mean() for m in ms])  # noqa: E731
    assert pair["difference"] == pytest.approx(mean("a", "a_s1") - mean("b", "b_s1"))
    assert pair["seeds"] == {"a": ["a", "a_s1"], "b": ["b", "b_s1"]}
    assert pair["fidelity"]["kl"]["difference"] == pytest.approx(0.225 - 0.425)
    assert pair["per_seed"]["average"] == {
        "a": [summary["models"]["a"]["average"], summary["models"]["a_s1"]["average"]],
        "b": [summary["models"]["b"]["average"], summary["models"]["b_s1"]["average"]],
    }
    assert pair["verdict"]["claim"] == "a > b" and pair["verdict"]["scope"] == "above_chance"
    assert pair["above_chance"]["seeds"] == [2, 2]
    row = next(line for line in markdown.comparison_table(summary["comparisons"]) if line.startswith("| `a` − `b`"))
    assert "| a, a_s1; b, b_s1 |" in row and row.endswith("| a > b | no CI |"), row
    assert f"{100 * pair['difference']:+.2f} [" in row and f"{pair['fidelity']['kl']['difference']:+.4f} [" in row


def _simulated_arm(rng, p: np.ndarray, seeds: int, shift: float, seed_sd: float) -> list[pd.DataFrame]:
    """One recipe trained under `seeds` seeds: each seed moves every item's chance of a right answer by
    the recipe's `shift` plus its own N(0, seed_sd) offset; each item is then scored right or wrong."""
    frames = []
    for _ in range(seeds):
        prob = np.clip(p + shift + rng.normal(0, seed_sd), 0, 1)
        score = (rng.random(len(p)) < prob).astype(float)
        frames.append(pd.DataFrame({"task": "t", "subtask": "t", "doc_id": np.arange(len(p)), "score": score}))
    return frames


def test_hierarchical_bootstrap_covers_a_known_difference_where_an_item_only_ci_does_not():
    """Known answer: recipe a is 2 points better than b in expectation over seeds and items. Over 100
    simulated studies (fresh items and seeds each), the 95% CI that resamples seeds then items covers
    the true difference at least ~95% of the time (it is conservative: the two crossed levels count
    the per-item noise twice); the CI over items alone, on seed-averaged items, misses it far more
    often when training seeds move the score (the case the old range-of-two-seeds rule was for)."""
    rng = np.random.default_rng(0)
    keys = ["task", "subtask", "doc_id"]
    covered = {"hierarchical": 0, "items only": 0}
    sims, true = 100, 0.02
    for k in range(sims):
        p = rng.beta(2, 2, size=200) * 0.6 + 0.2
        a, b = (_simulated_arm(rng, p, 5, shift, seed_sd=0.04) for shift in (true, 0.0))
        h = stats.hierarchical_bootstrap(a, b, 300, 0.95, k)
        i = stats.paired_bootstrap(
            stats.mean_over_seeds(a, keys, ["score"]), stats.mean_over_seeds(b, keys, ["score"]), 300, 0.95, k
        )
        covered["hierarchical"] += h["ci_low"] <= true <= h["ci_high"]
        covered["items only"] += i["ci_low"] <= true <= i["ci_high"]
        assert h["seeds"] == [5, 5] and h["ci_high"] - h["ci_low"] > i["ci_high"] - i["ci_low"]
    assert covered["hierarchical"] / sims >= 0.93, covered
    assert covered["items only"] / sims <= 0.88, covered


def test_hierarchical_bootstrap_with_one_model_a_side_is_the_paired_item_bootstrap():
    rng = np.random.default_rng(3)
    a = pd.DataFrame({"task": "t", "subtask": "t", "doc_id": np.arange(50), "score": (rng.random(50) < 0.6) * 1.0})
    b = a.assign(score=(rng.random(50) < 0.4) * 1.0)
    one = stats.hierarchical_bootstrap([a], [b], 500, 0.95, 7)
    assert one == stats.paired_bootstrap(a, b, 500, 0.95, 7)
    assert one["difference"] == pytest.approx(a["score"].mean() - b["score"].mean())
    # a replicate that equals its sibling adds no seed spread but halves nothing: same estimate
    two = stats.hierarchical_bootstrap([a, a], [b, b], 500, 0.95, 7)
    assert two["difference"] == pytest.approx(one["difference"]) and two["seeds"] == [2, 2]
