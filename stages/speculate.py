"""Speculative decoding: the base model as target, a pruned / fine-tuned / merged model as draft.

    python -m stages.speculate <draft>       (dvc.yaml: speculate@<draft>, over params `speculate.drafts`)
    python -m stages.speculate --baseline    (dvc.yaml: speculate_base, the target alone, measured once)

Both generate on the same held-out prompts (rows of `speculate.prompts.datasets` that finetune's
validation split kept out of training) with the same engine and sampling settings. The baseline
writes `<paths.metrics>/speculate_base/speculate_base.json` (tokens/s without speculation); each
draft writes `<paths.metrics>/speculate/<draft>.json`: vLLM's acceptance counters turned into
acceptance rate, mean accepted length and per-position acceptance, its tokens/s, and the speed-up
over the baseline. One engine start per draft is unavoidable (vLLM fixes the draft at start-up),
so the baseline is a separate stage that every draft reuses instead of restarting it each time.
"""

from __future__ import annotations

import argparse
import logging
import time

from sdd import speculation
from sdd.finetune import split_by_id, user_message
from sdd.io import read_json, read_parquet, write_json
from sdd.params import did_you_mean, load_params
from sdd.runtime import log_params, run_stage, timed
from sdd.schemas import PREPARED

log = logging.getLogger(__name__)


def prompt_ids(params, tokenizer) -> tuple[list[list[int]], list[str]]:
    """Chat-rendered token ids of the held-out prompts, and their row ids."""
    cfg = params.speculate.prompts
    rows = []
    for ds in cfg.datasets:
        df = read_parquet(params.paths.prepared_file(ds), PREPARED, producer=f"prepare@{ds}")
        ids = df["id"].tolist()
        held = split_by_id(ids, params.finetune.val_fraction, params.finetune.seed)
        ordered = [i for i in ids if i in held]
        rows += speculation.held_out_prompts(df.to_dict("records"), ordered, cfg.per_dataset, ds)
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": user_message(r["instruction"], r["context"])}],
                                              tokenize=False, add_generation_prompt=True) for r in rows]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered], [r["id"] for r in rows]


def measure(llm, prompts: list[list[int]], max_tokens: int, temperature: float, seed: int) -> dict:
    """Generate once to warm up, then time one batched generation; return tokens, seconds, counters."""
    from vllm import SamplingParams

    warm = SamplingParams(temperature=temperature, max_tokens=8, seed=seed)
    llm.generate([{"prompt_token_ids": prompts[0]}], warm, use_tqdm=False)
    before = speculation.spec_counters(llm.get_metrics())
    sampling = [SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed + i) for i in range(len(prompts))]
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"generated_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "counters": speculation.spec_counters(llm.get_metrics()) - before}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.speculate", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("draft", nargs="?", help="a key of speculate.drafts in params.yaml")
    group.add_argument("--baseline", action="store_true", help="measure the target alone")
    args = parser.parse_args(argv)
    params = load_params()
    cfg = params.speculate
    if args.draft and args.draft not in cfg.drafts:
        raise ValueError(f"unknown draft {args.draft!r}{did_you_mean(args.draft, cfg.drafts)}; "
                         f"speculate.drafts has {sorted(cfg.drafts)}")
    stage = f"speculate@{args.draft}" if args.draft else "speculate_base"
    log_params(stage, cfg)

    from sdd import modelio
    from sdd.generation import vllm_engine
    from transformers import AutoTokenizer

    target = params.paths.model_dir(cfg.target)
    modelio.check_model_dir(target)
    prompts, row_ids = prompt_ids(params, AutoTokenizer.from_pretrained(target))
    workload = speculation.prompts_fingerprint(prompts, {"max_tokens": cfg.prompts.max_tokens, "temperature": cfg.temperature,
                                                         "target": cfg.target, "engine": cfg.engine_args.model_dump()})
    common = {"temperature": cfg.temperature, "num_prompts": len(prompts), "max_tokens": cfg.prompts.max_tokens,
              "prompt_ids": row_ids, "workload": workload, "target": cfg.target}
    with timed(stage) as summary:
        if args.baseline:
            with vllm_engine(target, cfg.engine_args, disable_log_stats=False) as llm:
                run = measure(llm, prompts, cfg.prompts.max_tokens, cfg.temperature, cfg.engine_args.seed)
            write_json(params.paths.metrics_file("speculate_base"),
                       {**common, **{k: v for k, v in run.items() if k != "counters"}})
            summary.update(tokens_per_s=round(run["tokens_per_s"], 1))
            return
        baseline = read_json(params.paths.metrics_file("speculate_base"))
        if baseline.get("workload") != workload:
            raise ValueError(f"{params.paths.metrics_file('speculate_base')} was measured on other prompts or settings; "
                             f"re-run it first: dvc repro speculate_base")
        draft = params.paths.model_dir(cfg.drafts[args.draft])
        modelio.check_model_dir(draft)
        k = cfg.num_speculative_tokens
        spec = {"method": "draft_model", "model": str(draft), "num_speculative_tokens": k}
        with vllm_engine(target, cfg.engine_args, disable_log_stats=False, speculative_config=spec) as llm:
            run = measure(llm, prompts, cfg.prompts.max_tokens, cfg.temperature, cfg.engine_args.seed)
        result = {
            **common, **speculation.acceptance(run["counters"], k), "k": k, "draft": cfg.drafts[args.draft],
            "generated_tokens": run["generated_tokens"], "seconds": run["seconds"],
            "tokens_per_s_spec": run["tokens_per_s"], "tokens_per_s_base": baseline["tokens_per_s"],
            "speedup": run["tokens_per_s"] / baseline["tokens_per_s"],
        }
        write_json(params.paths.metrics_file("speculate", args.draft), result)
        summary.update(acceptance_rate=round(result["acceptance_rate"], 3),
                       mean_accepted_length=round(result["mean_accepted_length"], 2), speedup=round(result["speedup"], 2))


if __name__ == "__main__":
    run_stage(main)
