"""Which block to cut: calibration text, the score table as rows, and the measured KL of the
candidate blocks (with how well each cheap proxy predicts it).

    sequences, positions, counts = calibration(rows, tokenizer, cfg)   # rows: prepared, shuffled by the caller
    report = fidelity_report(model, states, batches, table, cfg)      # kl_to_base candidates per n

The scores themselves (angular distance, block influence, KL of a cut) are `sdd/model/layer_scores.py`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from sdd.config.layer_scores import LayerScoresParams
from sdd.data.chat import conversation_text
from sdd.errors import InputError
from sdd.model import layer_scores as ls

TOKEN_RULES = {
    "last": "the last real token of the chat-rendered conversation (for ChatML the newline after <|im_end|>)",
    "last_content": "the last token of the assistant's response text, before the end-of-turn marker",
}


def render(tokenizer: Any, row: dict) -> tuple[list[int], int]:
    """Token ids of instruction (+ context) and response in the chat template, and the index of the
    response's last content token. The text after the response holds only template markers, so the
    ids of the text up to the response's end are a prefix of the conversation's ids."""
    response = row["response"].strip()
    text = conversation_text(tokenizer, row["instruction"], row["context"], response)
    if response not in text:
        raise InputError(
            f"the chat template changes the response text of row {row.get('id')!r}, so its last content "
            f"token cannot be located; use layer_scores.token: last"
        )
    end = text.rfind(response) + len(response)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    content = tokenizer(text[:end], add_special_tokens=False)["input_ids"]
    if ids[: len(content)] != content:
        raise InputError(
            "the chat template's text after the response merges with it into other tokens; "
            "use layer_scores.token: last with this tokenizer"
        )
    return ids, len(content) - 1


def calibration(rows: list[dict], tokenizer: Any, cfg: LayerScoresParams) -> tuple[list[list[int]], list[int], dict]:
    """The first `samples` rows whose rendering fits `max_length` (longer ones are skipped and
    counted: truncating would move "the last token")."""
    sequences, positions, too_long = [], [], 0
    for row in rows:
        ids, content_end = render(tokenizer, row)
        if len(ids) > cfg.max_length:
            too_long += 1
            continue
        sequences.append(ids)
        positions.append(len(ids) - 1 if cfg.token == "last" else content_end)
        if len(sequences) == cfg.samples:
            break
    if len(sequences) < cfg.samples:
        raise InputError(
            f"layer_scores.samples={cfg.samples} but only {len(sequences)} of {len(rows)} rows of "
            f"{cfg.datasets} fit layer_scores.max_length={cfg.max_length} tokens ({too_long} longer); "
            f"lower samples, raise max_length, or add rows (datasets.<name>.limit)"
        )
    return sequences, positions, {"rows_available": len(rows), "rows_skipped_too_long": too_long}


def table_rows(table: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One row per (start, n), one column per proxy."""
    first = next(iter(table.values()))
    max_n, num_layers = first.shape
    rows = [
        {"start": s, "n": n, **{m: round(float(t[n - 1, s]), 6) for m, t in table.items()}}
        for n in range(1, max_n + 1)
        for s in range(num_layers + 1 - n)
    ]
    return pd.DataFrame(rows)


def fidelity_report(
    model: Any,
    states: list[torch.Tensor],
    batches: list[ls.Batch],
    table: dict[str, torch.Tensor],
    cfg: LayerScoresParams,
) -> dict[int, dict]:
    """For each n in kl_n_layers: candidates (the shortlist by the proxy, plus each proxy's best),
    their measured KL and top-1 agreement, and how well each proxy's ranking predicts the KL."""
    out = {}
    for n in cfg.kl_n_layers:
        ranked = ls.ranked_starts(table[cfg.shortlist_proxy], n)
        chosen = ranked[: cfg.shortlist] if cfg.shortlist else ranked
        argmins = {m: ls.best_starts(t)[n] for m, t in table.items()}
        starts = sorted(set(chosen) | set(argmins.values()))
        with tqdm(total=len(starts) * len(batches), desc=f"kl_to_base n={n}") as bar:
            fid = ls.kl_to_base(model, states, batches, n, starts, progress=bar.update)
        candidates = [
            {
                "start": s,
                "kl": round(fid[s].kl, 6),
                "top1": round(fid[s].top1, 6),
                **{m: round(float(t[n - 1, s]), 6) for m, t in table.items()},
            }
            for s in starts
        ]
        kls = [c["kl"] for c in candidates]
        out[n] = {
            "candidates": candidates,
            "shortlist": chosen,
            "best_start": min(starts, key=lambda s: (fid[s].kl, s)),
            # Spearman rho over the measured candidates: how well each proxy ranks blocks by fidelity
            "rank_correlation": {m: ls.rank_correlation([c[m] for c in candidates], kls) for m in table},
            "chosen_by": {
                m: {"start": s, "kl": round(fid[s].kl, 6), "top1": round(fid[s].top1, 6)} for m, s in argmins.items()
            },
        }
    return out


def score_blocks(
    model: Any, tokenizer: Any, sequences: list[list[int]], positions: list[int], cfg: LayerScoresParams
) -> tuple[dict[str, torch.Tensor], dict]:
    """The proxy table and the result record (best start per metric, kl_to_base candidates)."""
    num_layers = len(ls.decoder_layers(model))
    if cfg.max_n >= num_layers:
        raise InputError(
            f"layer_scores.max_n={cfg.max_n} but the model has {num_layers} layers; choose 1..{num_layers - 1}"
        )
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # less padding per batch
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = ls.make_batches([sequences[i] for i in order], [positions[i] for i in order], pad, cfg.batch_size)
    states = [ls.residual_stream(model, b).cpu() for b in tqdm(batches, desc="residual stream")]
    table = ls.proxy_table(states, batches, cfg.max_n)
    result: dict[str, Any] = {
        "metric": cfg.metric,
        "token": cfg.token,
        "token_rule": TOKEN_RULES[cfg.token] + " (angular_last_token; the other metrics average over real tokens)",
        "num_layers": num_layers,
        "samples": len(sequences),
        "tokens": sum(len(s) for s in sequences),
        "best_start_by_metric": {m: ls.best_starts(t) for m, t in table.items()},
    }
    if cfg.metric == "kl_to_base":
        result["kl_to_base"] = fidelity_report(model, states, batches, table, cfg)
        result["best_start_by_metric"]["kl_to_base"] = {n: r["best_start"] for n, r in result["kl_to_base"].items()}
    result["best_start"] = result["best_start_by_metric"][cfg.metric]
    return table, result
