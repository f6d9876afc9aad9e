"""Self-data distillation: the base model rewrites a prepared SFT dataset in its own words.

    python -m stages.distill gsm8k       (dvc.yaml: distill@gsm8k, one per `distill.datasets`)

Reads `<paths.prepared>/<ds>.parquet` and the base model, writes `<paths.distilled>/<ds>.parquet`
(pandera `DISTILLED`), the headline metrics `<paths.metrics>/distill/<ds>.headline.json` and the
details `<paths.metrics>/distill/<ds>.json`. Generation runs in chunks saved under
`<paths.scratch>/distill/<ds>/<fingerprint>/`, so a killed run resumes where it stopped; the
fingerprint covers the model, the input rows, the template and the sampling/engine settings.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sdd.artifacts import read_parquet, to_frame, write_json, write_parquet
from sdd.cache import PieceStore, tree_digest
from sdd.config import load_params
from sdd.data.answers import apply_selection
from sdd.data.prompts import build_messages, render, template_for
from sdd.data.schemas import DISTILLED, PREPARED
from sdd.errors import require
from sdd.generate.distill import generate_rewrites, run_key, summarize, token_budgets
from sdd.model.checkpoint import check_model_dir
from sdd.runtime import log_params, run_stage, stage_args, timed

log = logging.getLogger(__name__)


def main(argv: list[str]) -> None:
    name = stage_args(argv, __doc__, "dataset", "a dataset of distill.datasets").dataset
    params = load_params()
    cfg, paths = params.distill, params.paths
    require(name, cfg.datasets, "distill.datasets")
    template = template_for(params.dataset(name).format)
    log_params(f"distill@{name}", cfg)
    started = time.perf_counter()
    with timed(f"distill@{name}") as summary:
        df = read_parquet(paths.prepared_file(name), PREPARED, f"prepare@{name}")
        rows = df.astype(object).where(df.notna(), None).to_dict("records")
        model_dir = paths.model_dir("base")
        check_model_dir(model_dir)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prompts = [
            tokenizer(render(tokenizer, build_messages(r, template)), add_special_tokens=False).input_ids for r in rows
        ]
        budgets = token_budgets(cfg, [len(tokenizer(r["response"], add_special_tokens=False).input_ids) for r in rows])
        fits = [len(p) + b <= cfg.engine_args.max_model_len for p, b in zip(prompts, budgets, strict=True)]
        if not all(fits):
            log.warning(
                "%d of %d prompts + their token budget exceed distill.engine_args.max_model_len=%d; those rows "
                "keep their original response (reason prompt_too_long)",
                fits.count(False),
                len(rows),
                cfg.engine_args.max_model_len,
            )
        key = run_key(tree_digest(model_dir), rows, template, cfg)
        store = PieceStore(Path(paths.scratch) / "distill" / name, key)
        run = generate_rewrites(cfg, model_dir, prompts, [r["id"] for r in rows], fits, store, budgets)
        math = template.kind == "math"
        out = apply_selection(
            rows, run.generations, math, cfg.leak_phrases, cfg.min_length_ratio, cfg.end_at_answer_line
        )
        written = write_parquet(to_frame(out, DISTILLED), paths.distilled_file(name), DISTILLED)
        details = {
            **summarize(written, run),
            "engine": cfg.engine,
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
