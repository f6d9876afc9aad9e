"""Speculative decoding: the base model as target, a pruned / fine-tuned / merged model as draft.

    python -m stages.speculate pruned           (dvc.yaml: speculate@pruned, a key of speculate.drafts)
    python -m stages.speculate sdd --arm        (speculate_arm@sdd: every key of finetune.arms)
    python -m stages.speculate sdd_wise --merged (speculate_merged@sdd_wise: every key of merge.recipes)
    python -m stages.speculate --baseline       (speculate_base: the target alone, measured once)

Both generate on the same held-out prompts (rows of `speculate.prompts.datasets` that finetune's
validation split kept out of training) with the same engine and sampling settings. The baseline
writes `<paths.metrics>/speculate_base/speculate_base.json` (tokens/s without speculation); each
draft writes `<paths.metrics>/speculate/<draft>.json` (details) and `<draft>.headline.json`:
vLLM's acceptance counters turned into acceptance rate, mean accepted length and per-position
acceptance, its tokens/s, and the speed-up over the baseline. One engine start per draft is
unavoidable (vLLM fixes the draft at start-up), so the baseline is a separate stage.
"""

from __future__ import annotations

import argparse

from sdd.artifacts import read_parquet, write_json
from sdd.config import load_params, models
from sdd.data.schemas import PREPARED
from sdd.generate import speculation
from sdd.hardware import precision_record, resolve_dtype
from sdd.runtime import log_params, run_stage, timed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.speculate", description=(__doc__ or "").splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("draft", nargs="?", help="a draft (speculate.drafts; with --arm / --merged: an arm / a recipe)")
    group.add_argument("--baseline", action="store_true", help="measure the target alone")
    parser.add_argument("--arm", action="store_true", help="the draft is finetune.arms.<draft>")
    parser.add_argument("--merged", action="store_true", help="the draft is merge.recipes.<draft>")
    args = parser.parse_args(argv)
    params = load_params()
    cfg, paths = params.speculate, params.paths
    kind: models.Kind = "arm" if args.arm else "merged" if args.merged else "model"
    draft_dir = models.draft_dir(params, args.draft, kind) if args.draft else ""
    stage = models.stage_name("speculate", args.draft, kind) if args.draft else "speculate_base"
    unused = {"drafts", "num_speculative_tokens", "skip"} if args.baseline else {"drafts"}  # log what it reads
    log_params(stage, {**cfg.model_dump(exclude=unused), **({"draft": draft_dir} if args.draft else {})})
    if args.draft and args.draft in cfg.skip:
        write_json(paths.metrics_file("speculate", args.draft), {"draft": args.draft, "skipped": True})
        return write_json(paths.headline_file("speculate", args.draft), {"skipped": 1})

    from transformers import AutoTokenizer

    from sdd.generate.engines import seeded_sampling_settings, vllm_engine
    from sdd.model import checkpoint

    target = paths.model_dir(cfg.target)
    checkpoint.check_model_dir(target)
    ft = params.finetune  # the prompts are rows its validation split held out
    read = lambda ds: read_parquet(paths.prepared_file(ds), PREPARED, producer=f"prepare@{ds}")  # noqa: E731
    rows = [
        r
        for ds in cfg.prompts.datasets
        for r in speculation.held_out_rows(read(ds), ds, cfg.prompts.per_dataset, ft.val_fraction, ft.seed)
    ]
    prompts = speculation.prompt_ids(AutoTokenizer.from_pretrained(target), rows)
    engine = cfg.engine_args.model_copy(update={"dtype": resolve_dtype(cfg.engine_args.dtype, "vllm")})
    common = speculation.workload(cfg, engine, rows, prompts)
    common["precision"] = precision_record(cfg.engine_args.dtype, engine.dtype)
    with timed(stage) as summary:
        extra = seeded_sampling_settings(cfg.temperature, engine.max_model_len)  # per-request seeds
        if args.draft:
            baseline = speculation.baseline_for(paths.metrics_file("speculate_base"), common["workload"])
            extra["speculative_config"] = speculation.draft_config(
                paths.model_dir(draft_dir), cfg.num_speculative_tokens
            )
        with vllm_engine(
            target, engine, len(prompts), "speculate.engine_args", disable_log_stats=False, **extra
        ) as llm:
            run = speculation.measure(llm, prompts, cfg.prompts.max_tokens, cfg.temperature, engine.seed)
        if args.baseline:
            timing = {k: v for k, v in vars(run).items() if k != "counters"}
            write_json(paths.metrics_file("speculate_base"), {**common, **timing})
            write_json(paths.headline_file("speculate_base"), {"tokens_per_s": round(run.tokens_per_s, 2)})
            return summary.update(tokens_per_s=round(run.tokens_per_s, 1))
        result = speculation.draft_result(common, run, cfg.num_speculative_tokens, draft_dir, baseline)
        write_json(paths.metrics_file("speculate", args.draft), result)
        headline = {k: round(result[k], 4) for k in ("acceptance_rate", "mean_accepted_length", "speedup")}
        write_json(paths.headline_file("speculate", args.draft), headline)
        summary.update(**headline)


if __name__ == "__main__":
    run_stage(main)
