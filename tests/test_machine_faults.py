"""Machine faults injected into the real stages: a full disk during an artifact write, and work that
cannot fit in memory, each refused with a message naming the path or the estimate and the knob."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sdd.errors import InputError

from conftest import MIRROR, REPO


def project(root: Path, prepared: str = "data/prepared", limit: int = 4) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data_mirror"] = str(MIRROR)
    params["paths"]["prepared"] = prepared
    params["datasets"]["gsm8k"]["limit"] = limit
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def test_a_full_disk_during_a_write_leaves_the_previous_output_and_no_temporary_file(tmp_path, monkeypatch):
    """The Parquet writer fails halfway with ENOSPC (as pyarrow reports it): the previous output is
    byte-identical, no temporary file is left, and the message names the file."""
    from stages import prepare

    monkeypatch.chdir(project(tmp_path))
    monkeypatch.setenv("SDD_DATA_MIRROR", str(MIRROR))
    prepare.main(["gsm8k"])
    out = tmp_path / "data/prepared/gsm8k.parquet"
    before = out.read_bytes()
    monkeypatch.chdir(project(tmp_path, limit=8))

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError("[errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    with pytest.raises(InputError, match=r"no space left on the device while writing data/prepared/gsm8k\.parquet"):
        prepare.main(["gsm8k"])
    assert out.read_bytes() == before
    assert leftovers(out.parent) == []


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )


def test_a_really_full_filesystem_is_reported_and_nothing_is_lost(tmp_path):
    """The same on a real 128 KB filesystem filled up between two runs of prepare (needs the right to
    mount a tmpfs, which CI's root has; skipped elsewhere)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "128k"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = project(tmp_path / "repo", prepared=str(disk / "prepared"), limit=2)
        env = {**os.environ, "PYTHONPATH": str(REPO), "SDD_DATA_MIRROR": str(MIRROR)}
        run = lambda: subprocess.run(
            [sys.executable, "-m", "stages.prepare", "gsm8k"], cwd=root, env=env, capture_output=True, text=True
        )  # noqa: E731
        assert run().returncode == 0
        out = disk / "prepared/gsm8k.parquet"
        before = out.read_bytes()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * max(0, free - 2048))  # leave 2 KB: less than a new Parquet
        project(root, prepared=str(disk / "prepared"), limit=32)
        failed = run()
        assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
        assert f"no space left on the device while writing {out}" in failed.stderr
        assert out.read_bytes() == before and leftovers(out.parent) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def run(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=root, env=env, capture_output=True, text=True)


def test_a_vllm_engine_that_cannot_fit_is_refused_before_it_starts(tmp_path):
    """distill with a context so long that one sequence's KV cache exceeds the machine's memory: the
    stage stops with the estimate and the knob before vLLM starts (exit 2, no engine log)."""
    from test_distill import make_workdir

    from conftest import build_llama, build_tokenizer

    model = tmp_path / "model"
    tok = build_tokenizer()
    build_llama(tok, num_layers=4, seed=0, hidden=128).save_pretrained(model, safe_serialization=True)
    tok.save_pretrained(model)
    root = make_workdir(tmp_path / "repo", model, engine="vllm")
    cfg = yaml.safe_load((root / "params.yaml").read_text())
    cfg["distill"]["engine_args"]["max_model_len"] = 10**9
    (root / "params.yaml").write_text(yaml.safe_dump(cfg))
    out = run(root, "stages.distill", "gsm8k")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "the vLLM engine of data/models/base" in out.stderr and "KV cache" in out.stderr
    assert "lower distill.engine_args.max_model_len (now 1000000000)" in out.stderr
    assert "Initializing a V1 LLM engine" not in out.stderr


def test_an_evaluation_that_cannot_fit_is_refused_before_the_model_loads(tmp_path):
    """evaluate@base with a batch no memory holds: refused with the estimate and evaluate.batch_size."""
    from test_evaluate import evaluate_workdir, stage_env

    root = evaluate_workdir(tmp_path)
    assert run(root, "stages.fidelity_reference", env=stage_env(root)).returncode == 0
    cfg = yaml.safe_load((root / "params.yaml").read_text())
    cfg["evaluate"]["batch_size"] = 10**7
    (root / "params.yaml").write_text(yaml.safe_dump(cfg))
    out = run(root, "stages.evaluate", "base", env=stage_env(root))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "evaluating data/models/base" in out.stderr and "log-probabilities of one batch (fp32)" in out.stderr
    assert "lower evaluate.batch_size (now 10000000)" in out.stderr and "Loading weights" not in out.stderr
