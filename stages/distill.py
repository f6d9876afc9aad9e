"""Self-data distillation: the base model rewrites a prepared SFT dataset in its own words.

    python -m stages.distill gsm8k       (dvc.yaml: distill@gsm8k, one per `distill.datasets`)

Reads `<paths.prepared>/<ds>.parquet` and the base model, writes `<paths.distilled>/<ds>.parquet`
(pandera `DISTILLED`), the headline metrics `<paths.metrics>/distill/<ds>.headline.json` and the
details `<paths.metrics>/distill/<ds>.json`. Generation runs in chunks saved under
`<paths.scratch>/distill/<ds>/<fingerprint>/`, so a killed run resumes where it stopped; the
fingerprint covers the model, the input rows, the template and the sampling/engine settings. With
`distill.engine_args.data_parallel_size` N > 1 the stage starts N copies of itself as workers (one
engine each, sdd/generate/parallel.py), each generating its share of the chunks, then assembles them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sdd.artifacts import read_parquet, to_frame, write_json, write_parquet
from sdd.cache import PieceStore, tree_digest
from sdd.config import load_params
from sdd.data.answers import apply_selection
from sdd.data.prompts import template_for
from sdd.data.schemas import DISTILLED, PREPARED
from sdd.errors import require
from sdd.generate.distill import encode_prompts, run_key, summarize
from sdd.generate.parallel import rewrites, worker_shard
from sdd.hardware import precision_record, resolve_dtype
from sdd.model.checkpoint import check_model_dir
from sdd.runtime import log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    name = stage_args(argv, __doc__, "dataset", "a dataset of distill.datasets").dataset
    params = load_params()
    cfg, paths = params.distill, params.paths
    require(name, cfg.datasets, "distill.datasets")
    template = template_for(params.dataset(name).format)
    shard = worker_shard(os.environ)
    what = f"distill@{name}" + (f" worker {shard[0]} of {shard[1]}" if shard else "")
    requested = cfg.engine_args.dtype
    dtype = resolve_dtype(requested, "vllm" if cfg.engine == "vllm" else "inference")
    cfg = cfg.model_copy(update={"engine_args": cfg.engine_args.model_copy(update={"dtype": dtype})})
    log_params(what, cfg)
    started = time.perf_counter()
    with timed(what) as summary:
        df = read_parquet(paths.prepared_file(name), PREPARED, f"prepare@{name}")
        rows = df.astype(object).where(df.notna(), None).to_dict("records")
        model_dir = paths.model_dir("base")
        check_model_dir(model_dir)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prompts, budgets, fits = encode_prompts(tokenizer, rows, template, cfg)
        key = run_key(tree_digest(model_dir, paths.scratch), rows, template, cfg)
        store = PieceStore(Path(paths.scratch) / "distill" / name, key)
        run = rewrites(cfg, model_dir, prompts, [r["id"] for r in rows], fits, store, budgets, argv)
        if run is None:  # a data-parallel worker: its share of the chunks is in the store
            return
        math = template.kind == "math"
        out = apply_selection(
            rows, run.generations, math, cfg.leak_phrases, cfg.min_length_ratio, cfg.end_at_answer_line
        )
        written = write_parquet(to_frame(out, DISTILLED), paths.distilled_file(name), DISTILLED)
        details = {
            **summarize(written, run),
            "engine": cfg.engine,
            "precision": precision_record(requested, dtype),
            "token_budget_total": sum(b for b, f in zip(budgets, fits, strict=True) if f),
            "fingerprint": key,
            "wall_seconds": round(time.perf_counter() - started, 2),
        }
        write_json(paths.metrics_file("distill", name), details)
        write_json(
            paths.headline_file("distill", name),
            {k: details[k] for k in ("rows", "kept_distilled_fraction", "truncated", "generated_tokens_per_s")},
        )
        summary.update(
            rows=len(written),
            kept_distilled=details["kept_distilled_fraction"],
            tokens_per_s=details["generated_tokens_per_s"],
            chunks_reused=run.chunks_reused,
        )


if __name__ == "__main__":
    run_stage(main)
