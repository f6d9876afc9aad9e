"""Model cards: the metadata Hugging Face reads, the lineage a fine-tuned model inherits, and the
model-index results a published card carries."""

from __future__ import annotations

from pathlib import Path

import yaml

from sdd.config import load_params
from sdd.model.card import Card, how_of, lineage, merge_card, model_index, pruned_card, write_card

PRUNE_METRICS = {
    "removed_layers": [12, 13, 14, 15, 16, 17],
    "start_chosen_by": "auto: argmin of kl_to_base",
    "num_layers_before": 30,
    "num_layers_after": 24,
    "parameters_before": 134515008,
    "parameters_after": 113270592,
    "flops_reduction_pct": 16.9,
}


def repo_params(**sections):
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    return params.model_copy(update={k: getattr(params, k).model_copy(update=v) for k, v in sections.items()})


def metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_pruned_card_names_the_hub_base_its_licence_and_how_it_was_cut(tmp_path):
    params = repo_params()  # the bundled SmolLM2
    assert lineage(params) == (["HuggingFaceTB/SmolLM2-135M-Instruct"], "apache-2.0")
    path = write_card(tmp_path, pruned_card(params, PRUNE_METRICS))
    meta = metadata(path.read_text())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-generation" and "pruned" in meta["tags"]
    assert (
        how_of(tmp_path)[1]
        == "Pruned: decoder layers 12-17 removed (6 of 30), block chosen by auto: argmin of kl_to_base"
    )


def test_a_local_base_has_no_hub_id_and_an_unknown_licence(tmp_path):
    params = repo_params(base_model={"source": str(tmp_path)})
    assert lineage(params) == ([], "other")
    text = Card("x", [], [], ["made"], "other").render()
    assert "base_model" not in metadata(text) and "check its terms" in text


def test_merge_card_repeats_each_inputs_lineage(tmp_path):
    params = repo_params(paths={"models": str(tmp_path)})
    for arm in ("sdd_gsm8k", "sdd_alpaca"):
        write_card(tmp_path / "finetuned" / arm, Card(arm, [], [], [f"trained on {arm}"]))
    card = merge_card(params, "m", "slerp", ["finetuned/sdd_gsm8k", "finetuned/sdd_alpaca"], {"t": 0.5, "weight": None})
    assert card.how[0] == "SLERP merge (mergekit) of finetuned/sdd_gsm8k, finetuned/sdd_alpaca; {'t': 0.5}"
    assert card.how[1:] == [
        "`finetuned/sdd_gsm8k`: trained on sdd_gsm8k",
        "`finetuned/sdd_alpaca`: trained on sdd_alpaca",
    ]
    assert "mergekit" in card.metadata()["tags"]


def test_model_index_has_one_result_per_task_with_its_dataset_and_shots():
    evaluation = {
        "tasks": {
            "arc_challenge": {
                "source": "mirror:allenai/ai2_arc/ARC-Challenge",
                "eval_split": "test",
                "shots": 0,
                "limit": None,
                "n": 1172,
                "metric": "acc_norm",
                "filter": "none",
                "score": 0.3012,
            }
        }
    }
    (result,) = model_index(evaluation)  # huggingface_hub's EvalResult: the card library writes model-index
    meta = metadata(Card("sdd", ["org/base"], [], ["x"]).render([result]))
    (entry,) = meta["model-index"][0]["results"]
    assert entry["dataset"] == {
        "name": "arc_challenge",
        "type": "allenai/ai2_arc",
        "split": "test",
        "config": "ARC-Challenge",
        "args": {"num_few_shot": 0, "items": 1172},  # no limit: every item (None is not written)
    }
    assert entry["metrics"] == [{"type": "acc_norm", "value": 30.12, "name": "acc_norm (none)"}]
    assert meta["model-index"][0]["name"] == "sdd" and entry["task"] == {"type": "text-generation"}
    # a licence the Hub does not know needs a name and a link
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other",
        "base-model-license",
        "https://huggingface.co/org/base",
    )
