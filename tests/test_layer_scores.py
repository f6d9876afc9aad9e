"""Block scores: the one-pass table equals per-n brute force, padding does not change it, planted
identity layers are found (by every proxy and by kl_to_base with KL ~ 0), and the cached-suffix
KL equals a full forward pass of the cut model."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from sdd.artifacts import to_frame, write_parquet
from sdd.config import load_params
from sdd.config.layer_scores import PROXIES
from sdd.data.schemas import PREPARED
from sdd.model import layer_scores as ls
from sdd.model import layer_selection
from sdd.model.logits import kl_per_token, top1_agreement
from sdd.model.pruning import drop_layers
from stages import layer_scores as stage

from conftest import REPO, build_llama, build_tokenizer

TEXTS = [
    "Natalia sold clips to 48 of her friends in April.",
    "Write a short poem about the sea.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72.",
    "The quick brown fox",
    "Give three tips for staying healthy. 0123456789",
]


def encode(tok) -> tuple[list[list[int]], list[int]]:
    seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    return seqs, [len(s) - 2 for s in seqs]  # a position that is not the last token, to check it is honoured


def one_pass(model, seqs, positions, batch_size, side="right", max_n=4):
    batches = ls.make_batches(seqs, positions, pad_id=0, batch_size=batch_size, side=side)
    states = [ls.residual_stream(model, b) for b in batches]
    return ls.proxy_table(states, batches, max_n), states, batches


def layer_io(model, ids: list[int], first: int, second: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states entering layer `first` and layer `second` (== L: the last layer's raw output), one text."""
    layers = model.get_decoder().layers
    got = {}

    def grab(key):
        def hook(m, args, kwargs):
            got[key] = args[0] if args else kwargs["hidden_states"]

        return hook

    handles = [layers[first].register_forward_pre_hook(grab("a"), with_kwargs=True)]
    if second < len(layers):
        handles.append(layers[second].register_forward_pre_hook(grab("b"), with_kwargs=True))
    else:
        handles.append(layers[-1].register_forward_hook(lambda m, a, out: got.update(b=out)))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), use_cache=False)
    for h in handles:
        h.remove()
    return got["a"][0], got["b"][0]


@pytest.fixture(scope="module")
def model():
    # Module-scoped for speed; the tokenizer it is built from is deterministic, so it matches
    # the per-test `tokenizer` fixture token for token.
    return build_llama(build_tokenizer(), num_layers=6, seed=1)


def test_one_pass_table_equals_brute_force_per_n(model, tokenizer):
    seqs, positions = encode(tokenizer)
    table, _, _ = one_pass(model, seqs, positions, batch_size=2, max_n=4)
    num_layers = 6
    influence = []
    for start in range(num_layers):
        influence.append(sum(float((1 - ls.cosine(*layer_io(model, s, start, start + 1))).sum()) for s in seqs))
    tokens = sum(len(s) for s in seqs)
    for n in range(1, 5):  # one separate set of passes per n, one text at a time (no padding)
        for start in range(num_layers + 1 - n):
            last, mean = [], []
            for ids, pos in zip(seqs, positions):
                a, b = layer_io(model, ids, start, start + n)
                last.append(float(ls.angular_distance(a[pos], b[pos])))
                mean += ls.angular_distance(a, b).tolist()
            assert table["angular_last_token"][n - 1, start] == pytest.approx(sum(last) / len(last), abs=1e-5)
            assert table["angular_mean_token"][n - 1, start] == pytest.approx(sum(mean) / len(mean), abs=1e-5)
            expected_bi = sum(influence[start : start + n]) / tokens
            assert table["block_influence"][n - 1, start] == pytest.approx(expected_bi, abs=1e-5)
        assert all(math.isnan(float(v)) for v in table["angular_mean_token"][n - 1, num_layers + 1 - n :])


def test_scores_do_not_depend_on_padding(model, tokenizer):
    seqs, positions = encode(tokenizer)
    reference, _, _ = one_pass(model, seqs, positions, batch_size=1)
    for batch_size, side in [(5, "right"), (2, "left"), (3, "left")]:
        table, _, _ = one_pass(model, seqs, positions, batch_size=batch_size, side=side)
        for name in PROXIES:
            torch.testing.assert_close(table[name], reference[name], atol=1e-5, rtol=0, equal_nan=True)


def planted(tokenizer, identity: list[int], num_layers: int = 8):
    """A model whose layers in `identity` add nothing to the residual stream (zero output projections)."""
    model = build_llama(tokenizer, num_layers=num_layers, seed=2)
    with torch.no_grad():
        for i in identity:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


def test_planted_identity_block_is_chosen_by_every_metric(tokenizer):
    model = planted(tokenizer, identity=[3, 4])
    seqs, positions = encode(tokenizer)
    table, states, batches = one_pass(model, seqs, positions, batch_size=2, max_n=3)
    for name in PROXIES:
        assert ls.best_starts(table[name])[2] == 3, name
        assert float(table[name][1, 3]) == pytest.approx(0.0, abs=1e-3)
    fidelity = ls.kl_to_base(model, states, batches, n=2, starts=list(range(7)))
    assert min(fidelity, key=lambda s: fidelity[s].kl) == 3
    assert fidelity[3].kl == pytest.approx(0.0, abs=1e-6)
    assert fidelity[3].top1 == 1.0
    assert all(fidelity[s].kl > 1e-3 for s in fidelity if s != 3)


def test_cached_suffix_kl_equals_full_forward_of_the_cut_model(model, tokenizer):
    seqs, positions = encode(tokenizer)
    _, states, batches = one_pass(model, seqs, positions, batch_size=2, side="left")
    n = 2
    fidelity = ls.kl_to_base(model, states, batches, n=n, starts=[0, 2, 4])
    for start in [0, 2, 4]:
        cut = copy.deepcopy(model)
        drop_layers(cut, start, n)
        kl = top1 = count = 0.0
        for ids in seqs:  # brute force: a full forward of the pruned model, one text at a time
            x = torch.tensor([ids])
            with torch.no_grad():
                base, pruned = model(input_ids=x).logits[0], cut(input_ids=x).logits[0]
            kl += float(kl_per_token(base, pruned).sum())
            top1 += float(top1_agreement(base, pruned).sum())
            count += len(ids)
        assert fidelity[start].kl == pytest.approx(kl / count, rel=1e-4, abs=1e-6)
        assert fidelity[start].top1 == pytest.approx(top1 / count, abs=1e-6)


def test_rank_correlation():
    assert ls.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert ls.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert ls.rank_correlation([1, 2], [1, 2]) is None


# --- the stage, on a tiny model in a temporary project ------------------------------------------


def make_project(root: Path, monkeypatch, model_factory=None, rows: int = 12, **overrides) -> Path:
    """A working directory with the repository's params.yaml, a tiny base model and two prepared datasets."""
    tok = build_tokenizer()
    model = (model_factory or (lambda t: build_llama(t, num_layers=8, seed=3, hidden=128)))(tok)
    model.save_pretrained(root / "data/models/base", safe_serialization=True)
    tok.save_pretrained(root / "data/models/base")
    for prefix, ds in (("a", "gsm8k"), ("b", "alpaca")):
        frame = to_frame(
            [
                {
                    "id": f"{prefix}{i:015x}",
                    "dataset": ds,
                    "instruction": f"Question {i}: {TEXTS[i % 5]}",
                    "context": "",
                    "response": TEXTS[(i + 1) % 5],
                    "answer": None,
                }
                for i in range(rows)
            ],
            PREPARED,
        )
        write_parquet(frame, root / f"data/prepared/{ds}.parquet", PREPARED)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["layer_scores"].update(
        {
            "samples": 8,
            "max_length": 96,
            "batch_size": 3,
            "max_n": 4,
            "dtype": "float32",
            "kl_n_layers": [2],
            "shortlist": 3,
        }
    )
    params["prune"].update({"n_layers": 2})
    for key, value in overrides.items():
        section, name = key.split("__")
        params[section][name] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    return root


def test_stage_writes_scores_table_and_candidates(tmp_path, monkeypatch):
    make_project(tmp_path, monkeypatch, model_factory=lambda t: planted(t, identity=[5, 6]))
    stage.main([])
    scores = json.loads(Path("metrics/layer_scores/scores.json").read_text())
    assert scores["metric"] == "kl_to_base" and scores["token"] == "last_content"
    assert scores["best_start"]["2"] == 5
    fid = scores["kl_to_base"]["2"]
    assert {c["start"] for c in fid["candidates"]} >= set(fid["shortlist"]) | {5}
    assert set(fid["rank_correlation"]) == set(PROXIES)
    table = pd.read_csv("metrics/layer_scores/table.csv")
    assert list(table.columns) == ["start", "n", *PROXIES]
    assert len(table) == sum(8 + 1 - n for n in range(1, 5))
    measured = pd.read_csv("metrics/layer_scores/candidates.csv")
    assert list(measured["start"]) == [c["start"] for c in fid["candidates"]] and set(measured["n"]) == {2}


def test_shortlist_of_every_candidate_equals_no_shortlist(tmp_path, monkeypatch):
    make_project(
        tmp_path, monkeypatch, model_factory=lambda t: build_llama(t, num_layers=6, seed=3), layer_scores__samples=4
    )
    results = {}
    for shortlist in (None, 5):  # 6 layers, n = 2: starts 0..4
        params = yaml.safe_load(Path("params.yaml").read_text())
        params["layer_scores"]["shortlist"] = shortlist
        Path("params.yaml").write_text(yaml.safe_dump(params))
        stage.main([])
        results[shortlist] = json.loads(Path("metrics/layer_scores/scores.json").read_text())["kl_to_base"]["2"]
    assert results[None]["candidates"] == results[5]["candidates"]
    assert results[None]["best_start"] == results[5]["best_start"]
    assert len(results[None]["candidates"]) == 5


def test_last_token_rule_reads_the_chat_template_newline(tmp_path, monkeypatch):
    tok = build_tokenizer()
    row = {"instruction": "Write a short poem", "context": "", "response": "The sea."}
    ids, content_end = layer_selection.render(tok, row)
    assert tok.decode(ids[content_end + 1 :]) == "<|im_end|>\n"
    assert tok.decode(ids[: content_end + 1]).endswith("The sea.")


def test_too_few_usable_rows_is_a_clear_error(tmp_path, monkeypatch):
    make_project(tmp_path, monkeypatch, layer_scores__samples=100)
    with pytest.raises(ValueError, match=r"layer_scores.samples=100 but only 24 of 24 rows"):
        stage.main([])


def test_unknown_metric_and_missing_kl_size_fail_at_params(tmp_path, monkeypatch):
    make_project(tmp_path, monkeypatch, layer_scores__metric="angular_last_tokn")
    with pytest.raises(
        ValueError,
        match=r"layer_scores.metric: Input should be .*'angular_last_tokn'\) \(did you mean 'angular_last_token'\?\)",
    ):
        load_params()
    make_project(tmp_path, monkeypatch, prune__n_layers=3)
    with pytest.raises(ValueError, match=r"add 3 to layer_scores.kl_n_layers"):
        load_params()
