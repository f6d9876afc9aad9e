"""Hugging Face model cards (`README.md` with YAML metadata) for the models the pipeline writes, built
and read with huggingface_hub's `ModelCard` / `ModelCardData` / `EvalResult` (a valid `model-index`).

    card = Card("Pruned SmolLM2", base_model=["HuggingFaceTB/SmolLM2-135M-Instruct"], datasets=[], how=[...])
    write_card(model_dir, card)          # inside the stage's atomic output folder

The stage that makes a model writes its card (prune, finetune@<arm>, merge@<recipe>): how it was
made, from the stage's own params and measurements, kept as the card's `sdd_how` metadata (and as
Markdown bullets) so a child's card repeats its parent's lineage without parsing Markdown. Evaluation
results come later, in other stages: `publish` writes cards with `model-index` results under
`reports/cards/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdd.config import Params
from sdd.model.source import BUNDLED, local_dir

TAGS = ["sdd-prune", "pruned", "layer-pruning"]


@dataclass(frozen=True)
class Card:
    title: str
    base_model: list[str]  # hub ids (empty: a local model)
    datasets: list[str]  # hub ids of the training data (empty: none, or local files)
    how: list[str]  # Markdown bullets: how the model was made
    license: str = "other"
    tags: list[str] = field(default_factory=list)

    def data(self, results: list[Any] | None = None) -> Any:
        """The card's metadata (`ModelCardData`); `results` (`EvalResult`s) become its model-index."""
        from huggingface_hub import ModelCardData

        licence: dict[str, Any] = {"license": self.license}
        if self.license == "other":  # the Hub needs a name and a link for a licence it does not know
            link = f"https://huggingface.co/{self.base_model[0]}" if self.base_model else "LICENSE"
            licence |= {"license_name": "base-model-license", "license_link": link}
        base = self.base_model[0] if len(self.base_model) == 1 else list(self.base_model) or None
        return ModelCardData(
            **licence,
            library_name="transformers",
            pipeline_tag="text-generation",
            base_model=base,
            datasets=list(self.datasets) or None,
            tags=[*TAGS, *self.tags],
            model_name=self.title,
            eval_results=results or None,
            sdd_how=list(self.how),
        )

    def metadata(self) -> dict:
        return self.data().to_dict()

    def render(self, results: list[Any] | None = None, extra: str = "") -> str:
        """The card text; `results` adds `model-index` entries (publishable cards), `extra` Markdown
        after the lineage."""
        from huggingface_hub import ModelCard

        licence_note = (
            "\nThe licence is the base model's; check its terms before publishing.\n" if self.license == "other" else ""
        )
        bullets = "\n".join(f"- {line}" for line in self.how)
        body = (
            f"# {self.title}\n\nMade by the sdd-prune pipeline (layer pruning + recovery, after Thangarasa et al. "
            f"2024, arXiv:2410.09982).\n\n## How it was made\n\n{bullets}\n{licence_note}{extra}"
        )
        return str(ModelCard(f"---\n{self.data(results).to_yaml()}\n---\n\n{body}"))


def lineage(params: Params) -> tuple[list[str], str]:
    """(the base model's hub id, or none for a local folder; its licence when known, else "other")."""
    source = params.base_model.source
    bundled = BUNDLED.get(source.removeprefix("bundled:")) if source.startswith("bundled:") else None
    if bundled:
        return [bundled.hub_id], bundled.license
    return ([] if local_dir(source) else [source]), "other"


def dataset_ids(params: Params, names: list[str]) -> list[str]:
    """Hub ids of these `datasets` entries (local files are not hub datasets and are left out)."""
    sources = [params.datasets[name].source for name in names]
    return [s for s in sources if not Path(s).suffix and s.count("/") == 1]


def pruned_card(params: Params, metrics: dict) -> Card:
    """The pruned model's card, from the prune stage's metrics."""
    base_ids, licence = lineage(params)
    removed, before = metrics["removed_layers"], metrics["num_layers_before"]
    how = [
        f"Base model: `{params.base_model.source}` ({before} decoder layers), saved as {params.base_model.dtype}",
        f"Pruned: decoder layers {removed[0]}-{removed[-1]} removed ({len(removed)} of {before}), "
        f"block chosen by {metrics['start_chosen_by']}",
        f"Parameters {metrics['parameters_before']:,} -> {metrics['parameters_after']:,}; forward FLOPs per token "
        f"-{metrics['flops_reduction_pct']}%",
        "No training after pruning",
    ]
    name = base_ids[0].split("/")[-1] if base_ids else "model"
    return Card(f"{name} pruned to {metrics['num_layers_after']} layers", base_ids, [], how, licence)


def merge_card(params: Params, name: str, method: str, models: list[str], recipe: dict) -> Card:
    """A merged model's card: the recipe, then each input's own lineage (replaces mergekit's card)."""
    base_ids, licence = lineage(params)
    settings = {k: v for k, v in recipe.items() if k not in ("models", "method") and v is not None}
    how = [f"{method.upper()} merge (mergekit) of {', '.join(models)}; {settings}"]
    for model in models:
        how += [f"`{model}`: {line}" for line in how_of(params.paths.model_dir(model))]
    return Card(f"{name}: merge of recovered models", base_ids, [], how, licence, ["merge", "mergekit", method])


def model_index(evaluation: dict) -> list[Any]:
    """`EvalResult`s (the card's model-index) from an evaluate@<model> metrics JSON: one per task
    (dataset id, config and split from the task's source, shots, the lm-eval metric in %)."""
    from huggingface_hub import EvalResult

    results = []
    for task, t in sorted(evaluation["tasks"].items()):
        parts = t["source"].split(":", 1)[-1].split("/")  # "mirror:allenai/ai2_arc/ARC-Challenge"
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type="/".join(parts[:2]),
                dataset_name=task,
                dataset_config=parts[2] if len(parts) > 2 else None,
                dataset_split=t["eval_split"],
                dataset_args={"num_few_shot": t["shots"], "limit": t["limit"], "items": t["n"]},
                metric_type=t["metric"],
                metric_value=round(100 * t["score"], 2),
                metric_name=f"{t['metric']} ({t['filter']})",
            )
        )
    return results


def how_of(model_dir: Path) -> list[str]:
    """How the model in `model_dir` was made, from its card's metadata (empty without a card): a
    fine-tuned model's card repeats its pruned parent's."""
    from huggingface_hub import ModelCard

    path = Path(model_dir) / "README.md"
    if not path.is_file():
        return []
    return list(ModelCard.load(path).data.to_dict().get("sdd_how") or [])


def write_card(model_dir: Path, card: Card) -> Path:
    path = Path(model_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(card.render())
    return path
