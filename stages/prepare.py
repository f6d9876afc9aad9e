"""Turn one SFT source into canonical, validated Parquet; quarantine the rows that fail.

    python -m stages.prepare gsm8k       (dvc.yaml: prepare@gsm8k)

Writes `<paths.prepared>/<ds>.parquet` (pandera-checked), `<ds>.rejected.parquet` (every row
that failed, with its reason) `<paths.metrics>/prepare/<ds>.json` (counts) and `<ds>.headline.json` (rows, rejected).
When more than `prepare.max_rejected_fraction` of the rows fail, it writes none of them (the last
good outputs stay) and leaves this run's rejected rows in `<paths.scratch>/prepare/<ds>.rejected.parquet`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sdd.artifacts import to_frame, write_json, write_parquet
from sdd.config import load_params
from sdd.data import sources
from sdd.data.adapters import adapt_rows, sample
from sdd.data.schemas import PREPARED, REJECTED
from sdd.errors import InputError
from sdd.runtime import log_params, run_stage, stage_args, timed

log = logging.getLogger(__name__)


def main(argv: list[str]) -> None:
    name = stage_args(argv, __doc__, "dataset", "a key of datasets in params.yaml").dataset
    params = load_params()
    ds, cfg, paths = params.dataset(name), params.prepare, params.paths
    log_params(f"prepare@{name}", {"dataset": ds.model_dump(), "prepare": cfg.model_dump()})
    with timed(f"prepare@{name}") as summary:
        raw = sources.read_rows(ds, params.mirror(), Path.cwd())
        if not raw:
            raise InputError(
                f"dataset {name!r} ({ds.source}) has no rows; point `datasets.{name}.source` at a non-empty file"
            )
        adapted = adapt_rows(raw, name, ds.format, cfg.max_chars)
        fraction = len(adapted.rejected) / len(raw)
        if fraction > cfg.max_rejected_fraction:  # write nothing: the last good outputs stay
            scratch = Path(paths.scratch) / "prepare" / f"{name}.rejected.parquet"
            write_parquet(to_frame(adapted.rejected, REJECTED), scratch, REJECTED)
            raise InputError(
                sources.explain_rejections(name, ds, params.mirror(), raw, adapted, cfg.max_rejected_fraction)
                + f"\nNothing was written (the stage's outputs are as they were); this run's rejected rows: {scratch}"
            )
        if ds.limit is not None and ds.limit > len(adapted.accepted):
            log.warning(
                "datasets.%s.limit=%d but only %d valid rows exist; using all of them",
                name,
                ds.limit,
                len(adapted.accepted),
            )
        chosen = sample(adapted.accepted, ds.limit, ds.seed)
        metrics = {
            "rows_read": len(raw),
            **adapted.counts(),
            "rejected_fraction": round(fraction, 4),
            "written": len(chosen),
            "limit": ds.limit,
            "seed": ds.seed,
        }
        # Everything is computed: write (the prepared rows first, as the ones that can fail validation).
        write_parquet(to_frame(chosen, PREPARED), paths.prepared_file(name), PREPARED)
        write_parquet(to_frame(adapted.rejected, REJECTED), paths.rejected_file(name), REJECTED)
        write_json(paths.metrics_file("prepare", name), metrics)
        write_json(paths.headline_file("prepare", name), {"rows": len(chosen), "rejected": len(adapted.rejected)})
        summary.update(rows=len(chosen), rejected=len(adapted.rejected))


if __name__ == "__main__":
    run_stage(main)
