"""Materialise the model to prune as a standard Hugging Face directory.

    python -m stages.base_model          (dvc.yaml: base_model)

Reads `base_model` from params.yaml; writes `<paths.models>/base/` (safetensors, config,
tokenizer, chat template) and `<paths.metrics>/base_model/base_model.json`.
"""

from __future__ import annotations

from sdd.artifacts import atomic_path, write_json
from sdd.config import load_params
from sdd.model import checkpoint
from sdd.runtime import log_params, run_stage, stage_args, timed


def main(argv: list[str]) -> None:
    stage_args(argv, __doc__)
    params = load_params()
    cfg = params.base_model
    log_params("base_model", cfg)
    with timed("base_model") as summary:
        model, tok = checkpoint.load_source(
            cfg.source, cfg.revision, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle
        )
        info = {**checkpoint.summary(model), "source": cfg.source, "revision": cfg.revision, "dtype": cfg.dtype}
        with atomic_path(params.paths.model_dir("base")) as out:
            checkpoint.save_model(model, tok, out, cfg.dtype)
        write_json(params.paths.metrics_file("base_model"), info)
        write_json(
            params.paths.headline_file("base_model"),
            {"layers": info["num_hidden_layers"], "parameters": info["parameters"]},
        )
        summary.update(layers=info["num_hidden_layers"], parameters=info["parameters"])


if __name__ == "__main__":
    run_stage(main)
