"""Sharing artifacts through DVC remotes: a real S3-compatible server (moto) on loopback and a
local-directory remote. Push after `dvc repro`, clone fresh, pull, compare bytes, nothing to redo."""

from __future__ import annotations

import filecmp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, run_dvc

pytestmark = pytest.mark.slow

TARGETS = ["base_model", "prepare@gsm8k", "prepare@alpaca"]
ARTIFACTS = [
    "data/models/base",
    "data/prepared/gsm8k.parquet",
    "data/prepared/alpaca.parquet",
    "data/prepared/alpaca.rejected.parquet",
]
# Throwaway credentials for the local moto server; real ones come from the environment or
# `dvc remote modify --local`, never from params.yaml.
# Distinctive values, so the test can tell that they were written nowhere.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "sdd-test-key-id-5c1e",
    "AWS_SECRET_ACCESS_KEY": "sdd-test-secret-9f7b2",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_server():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("moto server did not start within 30 s")
        import boto3

        boto3.client("s3", endpoint_url=url, **_boto_kwargs()).create_bucket(Bucket="sdd-cache")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _boto_kwargs():
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def built_repo(tmp_path: Path, tiny_model_dir: Path, mirror: Path) -> Path:
    repo = copy_repo(tmp_path / "origin")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base_model"]["source"] = str(tiny_model_dir)
    params["data_mirror"] = str(mirror)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_dvc(repo, "repro", *TARGETS, env={"SDD_DATA_MIRROR": ""})
    return repo


def share_and_pull(repo: Path, tmp_path: Path, env: dict) -> tuple[Path, str]:
    """Push, clone, pull and check; returns the clone and every command's output."""
    pushed = run_dvc(repo, "push", *TARGETS, env=env)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results")
    clone = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    pulled = run_dvc(clone, "pull", *TARGETS, env=env)
    for rel in ARTIFACTS:
        a, b = repo / rel, clone / rel
        assert b.exists(), rel
        if a.is_dir():
            cmp = filecmp.dircmp(a, b)
            assert not (cmp.left_only or cmp.right_only or cmp.diff_files), rel
            for name in cmp.common_files:
                assert (a / name).read_bytes() == (b / name).read_bytes(), f"{rel}/{name}"
        else:
            assert a.read_bytes() == b.read_bytes(), rel
    status = run_dvc(clone, "status", *TARGETS, env={**env, "SDD_DATA_MIRROR": ""})
    again = run_dvc(clone, "repro", *TARGETS, env={**env, "SDD_DATA_MIRROR": ""})
    assert "Running stage 'base_model'" not in again.stdout and "Running stage 'prepare@" not in again.stdout, (
        status.stdout + again.stdout
    )
    return clone, "".join(p.stdout + p.stderr for p in (pushed, pulled, status, again))


def test_s3_remote_push_clone_pull(tmp_path, tiny_model_dir, mirror, s3_server):
    repo = built_repo(tmp_path, tiny_model_dir, mirror)
    run_dvc(repo, "remote", "add", "-d", "storage", "s3://sdd-cache/dvc")
    run_dvc(repo, "remote", "modify", "storage", "endpointurl", s3_server)
    clone, output = share_and_pull(repo, tmp_path, env=S3_ENV)
    # The credentials came from the environment only: no config, metric, log or artifact holds them.
    secrets = [S3_ENV["AWS_ACCESS_KEY_ID"].encode(), S3_ENV["AWS_SECRET_ACCESS_KEY"].encode()]
    assert not any(secret in output.encode() for secret in secrets)
    for root in (repo, clone):
        # everything but git's objects and the copied tests (this file names the values)
        for path in (
            p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in (".git", "tests")
        ):
            data = path.read_bytes()
            assert not any(secret in data for secret in secrets), path


def test_local_directory_remote(tmp_path, tiny_model_dir, mirror):
    repo = built_repo(tmp_path, tiny_model_dir, mirror)
    run_dvc(repo, "remote", "add", "-d", "shared", str(tmp_path / "shared-cache"))
    share_and_pull(repo, tmp_path, env={})


def test_second_concurrent_repro_is_refused(tmp_path, tiny_model_dir, mirror):
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base_model"]["source"] = str(tiny_model_dir)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "SDD_DATA_MIRROR": str(mirror)}
    first = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "base_model"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Wait until the first one runs its stage command (it holds the repo lock while it does).
    deadline = time.time() + 60
    while time.time() < deadline and not _stage_running(repo):
        time.sleep(0.1)
    second = run_dvc(repo, "repro", "base_model", env={"SDD_DATA_MIRROR": str(mirror)}, check=False)
    out, _ = first.communicate(timeout=300)
    assert second.returncode != 0
    # DVC locks per stage while a command runs: the refusal names the busy output and the blocker.
    message = second.stdout + second.stderr
    assert "is busy, it is being blocked by" in message and "repro base_model" in message, message
    assert first.returncode == 0, out
    assert (repo / "data/models/base/model.safetensors").is_file()


def _stage_running(repo: Path) -> bool:
    """True once a `python -m stages.base_model` process runs inside `repo`."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"stages.base_model" in cmdline and Path(os.readlink(proc / "cwd")) == repo.resolve():
                return True
        except (OSError, ValueError):
            continue
    return False
