"""Held-out measures that see recovery and forgetting where task accuracy cannot: per row, paired
between models, cheap enough for every evaluation.

    rows = heldout_rows(tokenizer, gold, plain, max_tokens=256)    # stage fidelity_reference, once
    measure(model, reference, rows, batch_size=4)                   # in evaluate@<model>

- `gold_nll`: the model's mean negative log-likelihood per token of held-out gold responses, rendered
  with the chat template exactly as fine-tuning renders them (the prompt unscored): the rows every
  arm's validation split keeps out of training, and the fidelity prompt sets' own reference answers
  (GSM8k test solutions, ...). In-distribution quality: what fine-tuning should lower.
- `plain_kl`, `plain_nll`: KL(reference ‖ model) per token and the model's NLL on plain, non-chat text
  (rows of the evaluation tasks' own splits that no task evaluates: HellaSwag contexts with their
  right ending, WinoGrande sentences with the right option). Forgetting: what fine-tuning in the
  chat format may raise, beside the chat-format fidelity.
Each row keeps its token count and sum, the unit a paired bootstrap resamples (a ratio estimator:
sum over rows / tokens over rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandera.pandas as pa
import torch
from pandera.pandas import Check, Column

from sdd.errors import InputError, MissingInput
from sdd.model.logits import kl_per_token, position_ids

HELDOUT_FILE = "heldout.parquet"  # under paths.eval, beside fidelity.reference.parquet
MEASURES = ("gold_nll", "plain_kl", "plain_nll")

HELDOUT = pa.DataFrameSchema(
    {
        "kind": Column(str, checks=Check.isin(["gold", "plain"])),
        "set": Column(str, checks=Check(lambda s: s.str.len() > 0, element_wise=False)),
        "id": Column(str, checks=Check(lambda s: s.str.len() > 0, element_wise=False)),
        "input_ids": Column(object),
        "start": Column(int, checks=Check.ge(1)),  # the first scored position (the prompt before it is not)
    },
    checks=[Check(lambda df: df["input_ids"].map(len) > df["start"], element_wise=False, name="a_token_to_score")],
    strict=True,
    ordered=True,
    name="heldout",
    metadata={"version": 1},
)

MEASURE_ROWS = pa.DataFrameSchema(
    {
        "measure": Column(str, checks=Check.isin(list(MEASURES))),
        "set": Column(str),
        "id": Column(str),
        "tokens": Column(int, checks=Check.gt(0)),
        "sum": Column(float, checks=Check.ge(0)),
    },
    strict=True,
    ordered=True,
    name="measures",
    metadata={"version": 1},
)


def heldout_file(eval_dir: str | Path) -> Path:
    return Path(eval_dir) / HELDOUT_FILE


def measures_file(eval_dir: str | Path, model: str) -> Path:
    return Path(eval_dir) / f"{model}.measures.parquet"


def plain_text(task: str, doc: dict) -> str:
    """A row of an evaluation task as plain text: the context with its right answer."""
    if task == "hellaswag":
        return f"{doc['ctx_a']} {doc['ctx_b']}".strip() + " " + doc["endings"][int(doc["label"])]
    if task == "winogrande":
        option = doc["option1"] if str(doc["answer"]) == "1" else doc["option2"]
        return doc["sentence"].replace("_", option)
    raise InputError(f"evaluate.measures.plain_tasks: {task!r} has no plain-text form; use hellaswag or winogrande")


def plain_rows(task: str, docs: list[dict], count: int, evaluated: int | None) -> list[dict]:
    """The last `count` documents of a task's evaluation split (the evaluated ones come first), as text."""
    if evaluated is None or evaluated + count > len(docs):
        raise InputError(
            f"evaluate.measures.plain_rows={count}: {task}'s evaluation split has {len(docs)} rows and "
            f"evaluate.tasks.{task}.limit={evaluated} of them are evaluated; the plain-text rows must be others "
            "(lower plain_rows or the task's limit)"
        )
    start = len(docs) - count
    return [
        {"set": f"plain:{task}", "id": str(start + i), "text": plain_text(task, d)} for i, d in enumerate(docs[start:])
    ]


def task_docs(task: str, mirror: Path | None) -> list[dict]:
    """The rows of a task's evaluation split, from the mirror's JSONL or the hub."""
    from sdd.eval.tasks import TASKS, mirror_file

    spec = TASKS[task]
    if mirror is not None:
        path = mirror_file(mirror, spec, spec.eval_split)
        if not path.is_file():
            raise MissingInput(
                f"evaluate.measures.plain_tasks ({task}): the mirror has no {path}; add the file "
                "or drop the task from evaluate.measures.plain_tasks"
            )
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    import datasets

    from sdd.hub import reaching_hub

    with reaching_hub("dataset", spec.hub, f"evaluate.measures.plain_tasks ({task})"):
        config = None if spec.config == "default" else spec.config
        return list(datasets.load_dataset(spec.hub, config, split=spec.eval_split))


def gold_rows(prepared: dict[str, list[dict]], val_fraction: float, seed: int, answers: list[dict]) -> list[dict]:
    """Gold rows: each prepared dataset's validation rows (the ids every arm holds out: finetune's
    split) as set `val:<ds>`, and the fidelity prompts' own answers as set `answer:<prompt set>`."""
    from sdd.data.examples import split_by_id

    rows = []
    for ds, data in prepared.items():
        held = split_by_id([r["id"] for r in data], val_fraction, seed)
        rows += [{**r, "set": f"val:{ds}"} for r in data if r["id"] in held]
    rows += [{**r, "set": f"answer:{r['dataset']}"} for r in answers if r.get("response")]
    return rows


def heldout_rows(tokenizer: Any, gold: list[dict], plain: list[dict], max_tokens: int) -> list[dict]:
    """HELDOUT rows: gold rows (canonical: set, id, instruction, context, response) chat-rendered as
    fine-tuning renders them, scored from the response on; plain rows (set, id, text) scored from the
    second token on. Rows are cut at `max_tokens`."""
    from sdd.data.examples import IGNORE, encode

    out = []
    for row in gold:
        ids, labels = encode(tokenizer, row["instruction"], row["context"], row["response"])
        start = next(i for i, label in enumerate(labels) if label != IGNORE)
        if start < max_tokens - 1:
            out.append(
                {"kind": "gold", "set": row["set"], "id": row["id"], "input_ids": ids[:max_tokens], "start": start}
            )
    for row in plain:
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"][:max_tokens]
        if len(ids) > 1:
            out.append({"kind": "plain", "set": row["set"], "id": row["id"], "input_ids": ids, "start": 1})
    return out


@torch.no_grad()
def _log_probs(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    m = mask.to(device)
    out = model(input_ids=ids.to(device), attention_mask=m, position_ids=position_ids(m), use_cache=False)
    return torch.log_softmax(out.logits[:, :-1].float(), dim=-1).cpu()  # position t predicts token t + 1


@torch.no_grad()
def measure(model: Any, reference: Any, rows: list[dict], batch_size: int, pad_id: int) -> list[dict]:
    """MEASURE_ROWS for `model`: gold_nll on the gold rows; plain_kl (against `reference`) and
    plain_nll on the plain rows. Right-padded batches of rows sorted by length."""
    out: list[dict] = []
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    for b in range(0, len(order), batch_size):
        part = [rows[i] for i in order[b : b + batch_size]]
        width = max(len(r["input_ids"]) for r in part)
        ids = torch.tensor([list(r["input_ids"]) + [pad_id] * (width - len(r["input_ids"])) for r in part])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in part])
        scored = torch.zeros(len(part), width - 1, dtype=torch.bool)
        for i, r in enumerate(part):
            scored[i, r["start"] - 1 : len(r["input_ids"]) - 1] = True
        logp = _log_probs(model, ids, mask)
        nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        plain = [r["kind"] == "plain" for r in part]
        kl = None
        if any(plain):  # the reference itself: KL is 0, no second forward pass
            kl = torch.zeros_like(nll) if reference is model else kl_per_token(_log_probs(reference, ids, mask), logp)
        for i, r in enumerate(part):
            tokens, where = int(scored[i].sum()), scored[i]
            base = {"set": r["set"], "id": r["id"], "tokens": tokens}
            if r["kind"] == "gold":
                out.append({"measure": "gold_nll", **base, "sum": float(nll[i][where].double().sum())})
            else:
                assert kl is not None
                out.append({"measure": "plain_kl", **base, "sum": float(kl[i][where].double().sum())})
                out.append({"measure": "plain_nll", **base, "sum": float(nll[i][where].double().sum())})
    return out


def summary(rows: list[dict]) -> dict:
    """Per measure: the token-weighted mean over all rows, and per set."""
    out: dict[str, Any] = {}
    for m in MEASURES:
        mine = [r for r in rows if r["measure"] == m]
        if not mine:
            continue
        sets = sorted({r["set"] for r in mine})
        per_set = {s: _ratio([r for r in mine if r["set"] == s]) for s in sets}
        out[m] = {"value": _ratio(mine), "tokens": sum(r["tokens"] for r in mine), "rows": len(mine), "sets": per_set}
    return out


def _ratio(rows: list[dict]) -> float:
    return sum(r["sum"] for r in rows) / sum(r["tokens"] for r in rows)
