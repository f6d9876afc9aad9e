"""The reference model's greedy continuations of the fidelity prompts, computed once for every
evaluated model.

    python -m stages.fidelity_reference      (dvc.yaml: fidelity_reference)

Reads `<paths.models>/<evaluate.fidelity.reference>` and the held-out prompt sets of
`evaluate.fidelity.prompts` (mirror or hub); writes `<paths.eval>/fidelity_reference.parquet`
(pandera `sdd.eval.fidelity.FIDELITY_REFERENCE`: prompt set, row id, prompt and continuation token ids) and
`<paths.metrics>/fidelity_reference/fidelity_reference.json`. Each `evaluate@<model>` then costs
one forward pass of the model and one of the reference over these tokens, no generation.
"""

from __future__ import annotations

from sdd.artifacts import to_frame, write_json, write_parquet
from sdd.config import load_params
from sdd.eval import fidelity
from sdd.hardware import precision_record, resolve_dtype
from sdd.model.checkpoint import load_model
from sdd.runtime import device, log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    cfg, paths = params.evaluate, params.paths
    fid = cfg.fidelity
    dtype = resolve_dtype(cfg.dtype, "inference")
    log_params("fidelity_reference", {"dtype": dtype, **fid.model_dump()})
    with timed("fidelity_reference") as summary:
        rows = fidelity.fidelity_rows(fid.prompts, params.mirror(), params.prepare.max_chars)
        model, tokenizer = load_model(paths.model_dir(fid.reference), dtype, device())
        table = fidelity.reference_table(model, tokenizer, rows, fid.max_new_tokens, fid.batch_size)
        out = fidelity.reference_file(paths.eval)
        write_parquet(to_frame(table, fidelity.FIDELITY_REFERENCE), out, fidelity.FIDELITY_REFERENCE)
        tokens = sum(len(r["continuation_ids"]) for r in table)
        ended = sum(bool(r["continuation_ids"]) and r["continuation_ids"][-1] == tokenizer.eos_token_id for r in table)
        metrics = {"prompts": len(table), "continuation_tokens": tokens, "ended_with_eos": ended}
        precision = precision_record(cfg.dtype, dtype)
        write_json(
            paths.metrics_file("fidelity_reference"), {**metrics, "reference": fid.reference, "precision": precision}
        )
        summary.update(metrics)


if __name__ == "__main__":
    run_stage(main)
