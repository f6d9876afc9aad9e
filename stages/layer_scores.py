"""Score every block of consecutive decoder layers of the base model on calibration text.

    python -m stages.layer_scores        (dvc.yaml: layer_scores)

Reads `<paths.models>/base` and the prepared datasets named in `layer_scores.datasets`; writes
`<paths.metrics>/layer_scores/scores.json` (metric, token position, best start per n, and for
`kl_to_base` every candidate's proxies, KL, top-1 agreement and rank correlations), the headline
`scores.headline.json`, `table.csv` (one row per (start, n), one column per proxy) and
`candidates.csv` (kl_to_base: each measured block's KL, top-1 agreement and proxies; else empty).
"""

from __future__ import annotations

import random

import pandas as pd

from sdd.artifacts import atomic_path, read_parquet, write_json
from sdd.config import load_params
from sdd.data.schemas import PREPARED
from sdd.hardware import precision_record, resolve_dtype
from sdd.model.checkpoint import load_model
from sdd.model.layer_selection import calibration, score_blocks, table_rows
from sdd.runtime import device, log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    cfg, paths = params.layer_scores, params.paths
    log_params("layer_scores", cfg)
    with timed("layer_scores") as summary:
        dtype = resolve_dtype(cfg.dtype, "inference")
        model, tokenizer = load_model(paths.model_dir("base"), dtype, device())
        rows = [
            r
            for name in cfg.datasets
            for r in read_parquet(paths.prepared_file(name), PREPARED, f"prepare@{name}").to_dict("records")
        ]
        random.Random(cfg.seed).shuffle(rows)
        sequences, positions, counts = calibration(rows, tokenizer, cfg)
        table, result = score_blocks(model, tokenizer, sequences, positions, cfg)
        result.update(counts, precision=precision_record(cfg.dtype, dtype))
        with atomic_path(paths.metrics_file("layer_scores", "table").with_suffix(".csv")) as tmp:
            table_rows(table).to_csv(tmp, index=False)
        candidates = [{"n": n, **c} for n, r in result.get("kl_to_base", {}).items() for c in r["candidates"]]
        with atomic_path(paths.metrics_file("layer_scores", "candidates").with_suffix(".csv")) as tmp:
            pd.DataFrame(candidates, columns=["n", "start", "kl", "top1", *table]).to_csv(tmp, index=False)
        write_json(paths.metrics_file("layer_scores", "scores"), result)
        kl = result.get("kl_to_base", {})
        headline = {f"best_start_n{n}": s for n, s in result["best_start"].items() if n in cfg.kl_n_layers or not kl}
        headline |= {f"kl_n{n}": min(c["kl"] for c in r["candidates"]) for n, r in kl.items()}
        write_json(paths.headline_file("layer_scores", "scores"), {"samples": len(sequences), **headline})
        summary.update(dtype=dtype, metric=cfg.metric, samples=len(sequences), best_start=result["best_start"])


if __name__ == "__main__":
    run_stage(main)
