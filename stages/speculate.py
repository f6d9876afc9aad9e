"""Speculative decoding: the base model as target, a pruned / fine-tuned / merged model as draft.

    python -m stages.speculate <draft>       (dvc.yaml: speculate@<draft>, over params `speculate.drafts`)
    python -m stages.speculate --baseline    (dvc.yaml: speculate_base, the target alone, measured once)

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

from sdd.artifacts import read_json, read_parquet, write_json
from sdd.config import load_params
from sdd.data.schemas import PREPARED
from sdd.errors import InputError, require
from sdd.generate import speculation
from sdd.runtime import log_params, run_stage, timed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.speculate", description=(__doc__ or "").splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("draft", nargs="?", help="a key of speculate.drafts in params.yaml")
    group.add_argument("--baseline", action="store_true", help="measure the target alone")
    args = parser.parse_args(argv)
    params = load_params()
    cfg, paths = params.speculate, params.paths
    if args.draft:
        require(args.draft, cfg.drafts, "speculate.drafts")
    stage = f"speculate@{args.draft}" if args.draft else "speculate_base"
    unused = {"drafts", "num_speculative_tokens"} if args.baseline else {"drafts"}  # log what this stage reads
    log_params(stage, {**cfg.model_dump(exclude=unused), **({"draft": cfg.drafts[args.draft]} if args.draft else {})})

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
    common = speculation.workload(cfg, rows, prompts)
    with timed(stage) as summary:
        extra: dict = {}
        if args.draft:
            baseline = read_json(paths.metrics_file("speculate_base"))
            if baseline.get("workload") != common["workload"]:
                raise InputError(
                    f"{paths.metrics_file('speculate_base')} was measured on other prompts or settings; "
                    f"re-run it first: dvc repro speculate_base"
                )
            draft = paths.model_dir(cfg.drafts[args.draft])
            checkpoint.check_model_dir(draft)
            extra["speculative_config"] = {
                "method": "draft_model",
                "model": str(draft),
                "num_speculative_tokens": cfg.num_speculative_tokens,
            }
        extra |= seeded_sampling_settings(cfg.temperature, cfg.engine_args.max_model_len)  # per-request seeds
        with vllm_engine(target, cfg.engine_args, disable_log_stats=False, **extra) as llm:
            run = speculation.measure(llm, prompts, cfg.prompts.max_tokens, cfg.temperature, cfg.engine_args.seed)
        if args.baseline:
            timing = {k: v for k, v in vars(run).items() if k != "counters"}
            write_json(paths.metrics_file("speculate_base"), {**common, **timing})
            write_json(paths.headline_file("speculate_base"), {"tokens_per_s": round(run.tokens_per_s, 2)})
            summary.update(tokens_per_s=round(run.tokens_per_s, 1))
            return
        result = speculation.draft_result(common, run, cfg.num_speculative_tokens, cfg.drafts[args.draft], baseline)
        write_json(paths.metrics_file("speculate", args.draft), result)
        headline = {k: round(result[k], 4) for k in ("acceptance_rate", "mean_accepted_length", "speedup")}
        write_json(paths.headline_file("speculate", args.draft), headline)
        summary.update(**headline)


if __name__ == "__main__":
    run_stage(main)
