"""Score every block of consecutive decoder layers of the base model on calibration text.

    python -m stages.layer_scores        (dvc.yaml: layer_scores)

Reads `<paths.models>/base` and the prepared datasets named in `layer_scores.datasets`; writes
`<paths.metrics>/layer_scores/scores.json` (metric, token position, best start per n, and for
`kl_to_base` every candidate's proxies, KL, top-1 agreement and rank correlations) and
`<paths.metrics>/layer_scores/table.csv` (one row per (start, n), one column per proxy) and
`candidates.csv` (kl_to_base: each measured block's KL, top-1 agreement and proxies; else empty).
"""

from __future__ import annotations

import logging
import random

import pandas as pd
import torch
from tqdm import tqdm

from sdd import layer_scores as ls
from sdd.io import atomic_path, read_parquet, write_json
from sdd.modelio import load_model
from sdd.params import load_params
from sdd.runtime import device, log_params, run_stage, timed
from sdd.schemas import PREPARED

log = logging.getLogger(__name__)

TOKEN_RULES = {
    "last": "the last real token of the chat-rendered conversation (for ChatML the newline after <|im_end|>)",
    "last_content": "the last token of the assistant's response text, before the end-of-turn marker",
}


def render(tokenizer, row: dict) -> tuple[list[int], int]:
    """Token ids of instruction (+ context) and response in the chat template, and the index of the
    response's last content token. The text after the response holds only template markers, so the
    ids of the text up to the response's end are a prefix of the conversation's ids."""
    context = (row["context"] or "").strip()
    user = f"{row['instruction'].strip()}\n\n{context}" if context else row["instruction"].strip()
    response = row["response"].strip()
    text = tokenizer.apply_chat_template([{"role": "user", "content": user},
                                          {"role": "assistant", "content": response}], tokenize=False)
    if response not in text:
        raise ValueError(f"the chat template changes the response text of row {row.get('id')!r}, so its last content "
                         f"token cannot be located; use layer_scores.token: last")
    end = text.rfind(response) + len(response)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    content = tokenizer(text[:end], add_special_tokens=False)["input_ids"]
    if ids[:len(content)] != content:
        raise ValueError("the chat template's text after the response merges with it into other tokens; "
                         "use layer_scores.token: last with this tokenizer")
    return ids, len(content) - 1


def calibration(params, tokenizer) -> tuple[list[list[int]], list[int], dict]:
    """`samples` rows drawn (seeded) from the calibration datasets whose rendering fits `max_length`."""
    cfg = params.layer_scores
    rows = []
    for name in cfg.datasets:
        rows += read_parquet(params.paths.prepared_file(name), PREPARED, f"prepare@{name}").to_dict("records")
    random.Random(cfg.seed).shuffle(rows)
    sequences, positions, too_long = [], [], 0
    for row in rows:
        ids, content_end = render(tokenizer, row)
        if len(ids) > cfg.max_length:
            too_long += 1  # truncating would move "the last token"; such rows are skipped and counted
            continue
        sequences.append(ids)
        positions.append(len(ids) - 1 if cfg.token == "last" else content_end)
        if len(sequences) == cfg.samples:
            break
    if len(sequences) < cfg.samples:
        raise ValueError(f"layer_scores.samples={cfg.samples} but only {len(sequences)} of {len(rows)} rows of "
                         f"{cfg.datasets} fit layer_scores.max_length={cfg.max_length} tokens ({too_long} longer); "
                         f"lower samples, raise max_length, or add rows (datasets.<name>.limit)")
    return sequences, positions, {"rows_available": len(rows), "rows_skipped_too_long": too_long}


def table_rows(table: dict[str, torch.Tensor]) -> pd.DataFrame:
    first = next(iter(table.values()))
    max_n, num_layers = first.shape
    rows = [{"start": s, "n": n, **{m: round(float(t[n - 1, s]), 6) for m, t in table.items()}}
            for n in range(1, max_n + 1) for s in range(num_layers + 1 - n)]
    return pd.DataFrame(rows)


def fidelity_report(model, states, batches, table, cfg) -> dict:
    """For each n in kl_n_layers: candidates (the shortlist by the proxy, plus each proxy's best),
    their measured KL and top-1 agreement, and how well each proxy's ranking predicts the KL."""
    out = {}
    for n in cfg.kl_n_layers:
        ranked = ls.ranked_starts(table[cfg.shortlist_proxy], n)
        chosen = ranked[:cfg.shortlist] if cfg.shortlist else ranked
        argmins = {m: ls.best_starts(t)[n] for m, t in table.items()}
        starts = sorted(set(chosen) | set(argmins.values()))
        with tqdm(total=len(starts) * len(batches), desc=f"kl_to_base n={n}") as bar:
            fid = ls.kl_to_base(model, states, batches, n, starts, progress=bar.update)
        candidates = [{"start": s, "kl": round(fid[s].kl, 6), "top1": round(fid[s].top1, 6),
                       **{m: round(float(t[n - 1, s]), 6) for m, t in table.items()}} for s in starts]
        kls = [c["kl"] for c in candidates]
        out[n] = {
            "candidates": candidates,
            "shortlist": chosen,
            "best_start": min(starts, key=lambda s: (fid[s].kl, s)),
            # Spearman rho over the measured candidates: how well each proxy ranks blocks by fidelity
            "rank_correlation": {m: ls.rank_correlation([c[m] for c in candidates], kls) for m in table},
            "chosen_by": {m: {"start": s, "kl": round(fid[s].kl, 6), "top1": round(fid[s].top1, 6)}
                          for m, s in argmins.items()},
        }
    return out


def main(argv: list[str]) -> None:
    params = load_params()
    cfg, paths = params.layer_scores, params.paths
    log_params("layer_scores", cfg)
    with timed("layer_scores") as summary:
        model, tokenizer = load_model(paths.model_dir("base"), cfg.dtype, device())
        num_layers = len(ls.decoder_layers(model))
        if cfg.max_n >= num_layers:
            raise ValueError(f"layer_scores.max_n={cfg.max_n} but the model has {num_layers} layers; "
                             f"choose 1..{num_layers - 1}")
        sequences, positions, counts = calibration(params, tokenizer)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # less padding per batch
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        batches = ls.make_batches([sequences[i] for i in order], [positions[i] for i in order], pad, cfg.batch_size)
        states = [ls.residual_stream(model, b).cpu() for b in tqdm(batches, desc="residual stream")]
        table = ls.proxy_table(states, batches, cfg.max_n)
        result = {
            "metric": cfg.metric,
            "token": cfg.token,
            "token_rule": TOKEN_RULES[cfg.token] + " (angular_last_token; the other metrics average over real tokens)",
            "num_layers": num_layers,
            "samples": len(sequences),
            "tokens": sum(len(s) for s in sequences),
            **counts,
            "best_start_by_metric": {m: ls.best_starts(t) for m, t in table.items()},
        }
        if cfg.metric == "kl_to_base":
            result["kl_to_base"] = fidelity_report(model, states, batches, table, cfg)
            result["best_start_by_metric"]["kl_to_base"] = {n: r["best_start"] for n, r in result["kl_to_base"].items()}
        result["best_start"] = result["best_start_by_metric"][cfg.metric]
        with atomic_path(paths.metrics_file("layer_scores", "table").with_suffix(".csv")) as tmp:
            table_rows(table).to_csv(tmp, index=False)
        candidates = [{"n": n, **c} for n, r in result.get("kl_to_base", {}).items() for c in r["candidates"]]
        with atomic_path(paths.metrics_file("layer_scores", "candidates").with_suffix(".csv")) as tmp:
            pd.DataFrame(candidates, columns=["n", "start", "kl", "top1", *table]).to_csv(tmp, index=False)
        write_json(paths.metrics_file("layer_scores", "scores"), result)
        summary.update(metric=cfg.metric, samples=len(sequences), best_start=result["best_start"])


if __name__ == "__main__":
    run_stage(main)
