"""Fingerprint the evaluation inputs so DVC sees when their content changes.

    python -m stages.eval_sources        (dvc.yaml: eval_sources, always runs, cheap)

Writes `<paths.sources>/eval.inputs.json`: for each task of `evaluate.tasks` the sha256 of every
mirror file lm-eval reads (or the hub commit), and for each fidelity prompt set the same
fingerprint `source@<ds>` computes. Every `evaluate@<model>` depends on this file, so a mirror file
replaced in place re-runs the evaluations (all of them read every task) and nothing else.
"""

from __future__ import annotations

from sdd.artifacts import write_json
from sdd.config import load_params
from sdd.data import sources
from sdd.eval.tasks import input_fingerprint
from sdd.runtime import log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    cfg, mirror = params.evaluate, params.mirror()
    log_params("eval_sources", {"tasks": sorted(cfg.tasks), "fidelity": sorted(cfg.fidelity.prompts)})
    with timed("eval_sources") as summary:
        tasks = {task: input_fingerprint(task, mirror) for task in sorted(cfg.tasks)}
        prompts = {name: sources.fingerprint(ds, mirror) for name, ds in sorted(cfg.fidelity.prompts.items())}
        write_json(params.paths.eval_source_file(), {"tasks": tasks, "fidelity_prompts": prompts})
        summary.update(tasks=len(tasks), prompt_sets=len(prompts))


if __name__ == "__main__":
    run_stage(main)
