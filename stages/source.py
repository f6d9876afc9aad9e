"""Fingerprint one dataset source so DVC sees when its bytes change.

    python -m stages.source gsm8k        (dvc.yaml: source@gsm8k, always runs, cheap)

Writes `<paths.sources>/<ds>.json`: the sha256 of the mirror/local file, or the hub commit the
pinned revision resolves to. `prepare@<ds>` depends on this file, so it reruns only when the
source content really changed, never because the stage merely ran again.
"""

from __future__ import annotations

from sdd.artifacts import write_json
from sdd.config import load_params
from sdd.data import sources
from sdd.runtime import log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    name = stage_args(argv, __doc__, "dataset", "a key of datasets in params.yaml").dataset
    params = load_params()
    ds = params.dataset(name)
    log_params(f"source@{name}", ds)
    with timed(f"source@{name}") as summary:
        fp = sources.fingerprint(ds, params.mirror())
        write_json(params.paths.source_file(name), {"dataset": name, **fp})
        summary.update(kind=fp["kind"], id=fp.get("sha256", fp.get("sha")))


if __name__ == "__main__":
    run_stage(main)
