"""Teacher logits: the unpruned base model's top-k next-token log-probabilities at every response
token of a dataset's training text, the targets of the `kd` fine-tuning objective.

    python -m stages.teacher_logits gsm8k              (dvc.yaml: teacher_logits@gsm8k, original responses)
    python -m stages.teacher_logits gsm8k --distilled  (teacher_logits_distilled@gsm8k, distilled responses)

Reads `<paths.models>/base` and `<paths.prepared>/<ds>.parquet` (or `<paths.distilled>/<ds>.parquet`)
rendered with the chat template exactly as fine-tuning renders it; writes `<paths.teacher>/<ds>/<kind>/`
(manifest.json + safetensors shards, format in sdd/model/teacher.py) and the metrics
`<paths.metrics>/teacher_logits/<ds>.<kind>[.headline].json`. Shards are computed under
`<paths.scratch>/teacher_logits/<ds>.<kind>/`; a killed run recomputes only the unfinished ones.
Computed once per (base model, data, teacher_logits settings): every KD arm and every experiment
that changes only the pruning or the training reuses it from DVC's cache.
"""

from __future__ import annotations

from pathlib import Path

from sdd.artifacts import write_json
from sdd.config import load_params
from sdd.hardware import precision_record, resolve_dtype
from sdd.model import teacher
from sdd.model.checkpoint import check_model_dir
from sdd.model.kd import teacher_producer
from sdd.model.recipe import dataset_rows
from sdd.runtime import device, log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    args = stage_args(
        argv,
        __doc__,
        "dataset",
        "a key of `datasets` (with --distilled: of distill.datasets)",
        flags={"distilled": "the distilled responses instead of the prepared (original) ones"},
    )
    ds, kind = args.dataset, "distilled" if args.distilled else "original"
    params = load_params()
    cfg, paths = params.teacher_logits, params.paths
    name = teacher_producer(ds, kind)
    requested = cfg.dtype
    cfg = cfg.model_copy(update={"dtype": resolve_dtype(requested, "inference")})
    log_params(name, cfg)
    model_dir = paths.model_dir("base")
    check_model_dir(model_dir)
    rows = dataset_rows(paths, ds, kind)  # a missing or invalid input fails before the model loads
    with timed(name) as summary:
        metrics = teacher.build(
            rows,
            model_dir,
            cfg,
            paths.teacher_dir(ds, kind),
            Path(paths.scratch) / "teacher_logits" / f"{ds}.{kind}",
            device(),
            {"dataset": ds, "kind": kind},
            params.finetune.rendering,
        )
        metrics["precision"] = precision_record(requested, cfg.dtype)
        write_json(paths.metrics_file("teacher_logits", f"{ds}.{kind}"), metrics)
        headline = ("rows", "response_tokens", "bytes_per_1000_rows", "forward_tokens_per_second")
        write_json(paths.headline_file("teacher_logits", f"{ds}.{kind}"), {k: metrics[k] for k in headline})
        summary.update(rows=metrics["rows"], tokens=metrics["response_tokens"], reused=metrics["shards_reused"])


if __name__ == "__main__":
    run_stage(main)
