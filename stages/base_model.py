"""Materialise the model to prune as a standard Hugging Face directory.

    python -m stages.base_model          (dvc.yaml: base_model)

Reads `base_model` from params.yaml; writes `<paths.models>/base/` (safetensors, config,
tokenizer, chat template) and `<paths.metrics>/base_model/base_model.json`.
"""

from __future__ import annotations

from sdd import modelio
from sdd.io import atomic_path, write_json
from sdd.params import load_params
from sdd.runtime import log_params, run_stage, timed


def main(argv: list[str]) -> None:
    params = load_params()
    cfg = params.base_model
    log_params("base_model", cfg)
    with timed("base_model") as summary:
        model, tok = modelio.load_source(cfg.source, cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                         allow_pickle=cfg.allow_pickle)
        info = {**modelio.summary(model), "source": cfg.source, "revision": cfg.revision, "dtype": cfg.dtype}
        with atomic_path(params.paths.model_dir("base")) as out:
            modelio.save_model(model, tok, out, cfg.dtype)
        write_json(params.paths.metrics_file("base_model"), info)
        summary.update(layers=info["num_hidden_layers"], parameters=info["parameters"])


if __name__ == "__main__":
    run_stage(main)
