"""What every evaluation is measured against, computed once: the reference model's greedy
continuations of the fidelity prompts, and the held-out text of the measures.

    python -m stages.fidelity_reference      (dvc.yaml: fidelity_reference)

Reads `<paths.models>/<evaluate.fidelity.reference>`, the prompt sets of `evaluate.fidelity.prompts`
and the evaluation tasks' rows (mirror or hub), and every prepared dataset; writes
- `<paths.eval>/fidelity.reference.parquet` (sdd.eval.fidelity.FIDELITY_REFERENCE: prompt set, row id,
  prompt and continuation token ids): each evaluate@<model> then runs forward passes only;
- `<paths.eval>/heldout.parquet` (sdd.eval.measures.HELDOUT): token ids of the gold rows (each dataset's
  validation rows, finetune's split; the fidelity prompts' answers) and of the plain-text rows;
- `<paths.metrics>/fidelity_reference/fidelity_reference.json`.
"""

from __future__ import annotations

import logging

from sdd.artifacts import read_parquet, to_frame, write_json, write_parquet
from sdd.config import load_params
from sdd.data.schemas import PREPARED
from sdd.eval import fidelity, measures
from sdd.hardware import precision_record, resolve_dtype
from sdd.model.checkpoint import load_model
from sdd.runtime import device, log_params, run_stage, stage_args, timed

log = logging.getLogger(__name__)


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    cfg, paths, ft = params.evaluate, params.paths, params.finetune
    fid, meas = cfg.fidelity, cfg.measures
    dtype = resolve_dtype(cfg.dtype, "inference")
    log_params("fidelity_reference", {"dtype": dtype, **fid.model_dump(), "measures": meas.model_dump()})
    with timed("fidelity_reference") as summary:
        mirror = params.mirror()
        rows = fidelity.fidelity_rows(fid.prompts, mirror, params.prepare.max_chars)
        prepared = {
            ds: read_parquet(paths.prepared_file(ds), PREPARED, f"prepare@{ds}").to_dict("records")
            for ds in params.datasets
        }
        gold = measures.gold_rows(prepared, ft.val_fraction, ft.seed, rows)
        plain = []
        for task in meas.plain_tasks:
            limit = cfg.tasks[task].limit if task in cfg.tasks else 0
            plain += measures.plain_rows(task, measures.task_docs(task, mirror), meas.plain_rows, limit)
        model, tokenizer = load_model(paths.model_dir(fid.reference), dtype, device())
        table = fidelity.reference_table(model, tokenizer, rows, fid.max_new_tokens, fid.batch_size)
        out = fidelity.reference_file(paths.eval)
        write_parquet(to_frame(table, fidelity.FIDELITY_REFERENCE), out, fidelity.FIDELITY_REFERENCE)
        held = measures.heldout_rows(tokenizer, gold, plain, meas.max_tokens)
        write_parquet(to_frame(held, measures.HELDOUT), measures.heldout_file(paths.eval), measures.HELDOUT)
        tokens = sum(len(r["continuation_ids"]) for r in table)
        ended = sum(bool(r["continuation_ids"]) and r["continuation_ids"][-1] == tokenizer.eos_token_id for r in table)
        sets = {s: sum(1 for r in held if r["set"] == s) for s in sorted({r["set"] for r in held})}
        cut = len(gold) - sum(r["kind"] == "gold" for r in held)
        if cut:
            log.warning(
                "%d of %d gold rows are not measured: their prompt is longer than evaluate.measures.max_tokens=%d "
                "(raise it to measure them)",
                cut,
                len(gold),
                meas.max_tokens,
            )
        metrics = {
            "prompts": len(table),
            "continuation_tokens": tokens,
            "ended_with_eos": ended,
            "heldout_rows": sets,
            "gold_rows_cut": cut,
        }
        precision = precision_record(cfg.dtype, dtype)
        write_json(
            paths.metrics_file("fidelity_reference"), {**metrics, "reference": fid.reference, "precision": precision}
        )
        summary.update(prompts=len(table), heldout=len(held))


if __name__ == "__main__":
    run_stage(main)
