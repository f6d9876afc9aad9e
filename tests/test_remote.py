"""Sharing artifacts through DVC remotes: a real S3-compatible server (moto) on loopback and a
local-directory remote. Push after `dvc repro`, clone fresh, pull, compare bytes, nothing to redo;
the whole DAG and a named experiment make the round trip a team makes (S3 remote + a shared git repo)."""

from __future__ import annotations

import filecmp
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import PIPELINE_ENV, copy_repo, dag_model, run_dvc, small_dag_params

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


# `dvc exp run` commits: an identity of its own, whatever the machine's git config holds.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}
EXPERIMENT = "bootstrap150"
ALWAYS = {"sources"}  # always_changed: hashes the outside inputs on every repro


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def small_dag_repo(tmp_path: Path, mirror: Path) -> Path:
    """A committed repo copy whose params run every stage of dvc.yaml in a few minutes on 2 cores."""
    model_dir = dag_model(tmp_path / "tiny")
    repo = copy_repo(tmp_path / "work")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    small_dag_params(params, model_dir, mirror)  # the mirror read only: both clones fingerprint the same files
    # Every speculate_arm/speculate_merged stage still runs but records "skipped": a vLLM engine start
    # each (~30 s on 2 busy cores) would test nothing more about sharing.
    params["speculate"]["skip"] = [*params["finetune"]["arms"], *params["merge"]["recipes"]]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "add", "-A")  # dvclive reads the git HEAD: not an empty repo
    git(repo, "commit", "-qm", "init")
    return repo


def workspace(root: Path) -> dict[str, bytes]:
    """Every file of the pipeline's folders (artifacts, metrics, reports, dvc.lock), by relative path."""
    files = {"dvc.lock": (root / "dvc.lock").read_bytes(), "params.yaml": (root / "params.yaml").read_bytes()}
    for folder in ("data", "metrics", "reports"):
        for path in sorted(p for p in (root / folder).rglob("*") if p.is_file()):
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def assert_same_workspace(a: Path, b: Path) -> None:
    left, right = workspace(a), workspace(b)
    assert sorted(left) == sorted(right), (
        f"only in {a.name}: {sorted(set(left) - set(right))}; only in {b.name}: {sorted(set(right) - set(left))}"
    )
    assert [k for k in left if left[k] != right[k]] == [], "files whose bytes differ"


def assert_nothing_to_do(repo: Path, env: dict) -> None:
    """`dvc status` lists only the always-run stage (DVC reports it as "always changed" forever)."""
    status = json.loads(run_dvc(repo, "status", "--json", env=env).stdout or "{}")
    assert set(status) <= ALWAYS and all(v == ["always changed"] for v in status.values()), status
    git_status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert git_status == "", git_status


def find_experiment(shown, name: str) -> dict:
    """The entry of `dvc exp show --json` output named `name` (a nested list of dicts)."""
    if isinstance(shown, dict):
        if shown.get("name") == name and isinstance(shown.get("data"), dict):
            return shown
        children = shown.values()
    elif isinstance(shown, list):
        children = shown
    else:
        return {}
    for child in children:
        found = find_experiment(child, name)
        if found:
            return found
    return {}


def test_team_shares_whole_dag_and_experiment_through_s3(tmp_path, mirror, s3_server):
    """One teammate reproduces the whole DAG and pushes (DVC cache to S3, commits to a shared git repo);
    a second clones, pulls and has nothing to recompute; an experiment travels the same way."""
    env = {**S3_ENV, **PIPELINE_ENV, **GIT_IDENTITY}
    timeline: list[tuple[str, float]] = []

    def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
        start = time.monotonic()
        proc = run_dvc(repo, *args, env=env)
        timeline.append((f"{repo.name}$ dvc {' '.join(args)}", time.monotonic() - start))
        return proc

    repo = small_dag_repo(tmp_path, mirror)
    shared = tmp_path / "shared.git"
    subprocess.run(["git", "init", "-q", "--bare", str(shared)], check=True)
    git(repo, "remote", "add", "origin", str(shared))
    run_dvc(repo, "remote", "add", "-d", "storage", "s3://sdd-cache/dvc")
    run_dvc(repo, "remote", "modify", "storage", "endpointurl", s3_server)  # no secret: it is committed

    # 1. Teammate A: the whole DAG, then push the artifacts and the commit that records them.
    first = dvc(repo, "repro")
    stages = set(re.findall(r"(?m)^(\S+?)\s", run_dvc(repo, "stage", "list", "--name-only").stdout))
    assert ran(first.stdout) == stages, f"stages that did not run: {stages - ran(first.stdout)}"
    pushed = dvc(repo, "push")
    import boto3

    bucket = boto3.client("s3", endpoint_url=s3_server, **_boto_kwargs())
    keys = {
        obj["Key"].removeprefix("dvc/")
        for page in bucket.get_paginator("list_objects_v2").paginate(Bucket="sdd-cache")
        for obj in page.get("Contents", [])
    }
    cache = repo / ".dvc/cache"
    cached = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    assert cached and cached <= keys, f"not pushed: {sorted(cached - keys)[:5]}"
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results")
    git(repo, "push", "-q", "origin", "HEAD:refs/heads/main")

    # 2. Teammate B: a fresh clone of the shared repo pulls everything and has nothing to recompute.
    clone = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(shared), str(clone)], check=True)
    assert not (clone / "data/models/base").exists()
    pulled = dvc(clone, "pull")
    assert_same_workspace(repo, clone)
    assert_nothing_to_do(clone, env)
    again = dvc(clone, "repro")
    assert ran(again.stdout) == ALWAYS, again.stdout
    assert_nothing_to_do(clone, env)  # sources rewrote its fingerprints byte for byte; dvc.lock unchanged
    assert (clone / "reports/recovery.md").read_bytes() == (repo / "reports/recovery.md").read_bytes()

    # 3. An experiment: A runs and pushes it, B pulls and applies it without recomputing anything.
    baseline_report = (repo / "metrics/report/report.json").read_bytes()
    exp = dvc(repo, "exp", "run", "-n", EXPERIMENT, "-S", "report.bootstrap=150")
    assert "report" in ran(exp.stdout) and ran(exp.stdout) <= ALWAYS | {"report", "publish"}, exp.stdout
    exp_report = (repo / "metrics/report/report.json").read_bytes()  # records the resamples ("iterations")
    assert exp_report != baseline_report, "the experiment did not change the report's results"
    exp_headline = json.loads((repo / "metrics/report/report.headline.json").read_text())
    exp_pushed = dvc(repo, "exp", "push", "origin", EXPERIMENT)
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=shared, capture_output=True, text=True
    ).stdout.split()
    assert any(ref.endswith("/" + EXPERIMENT) for ref in refs), refs

    exp_pulled = dvc(clone, "exp", "pull", "origin", EXPERIMENT)
    shown = find_experiment(json.loads(dvc(clone, "exp", "show", "--json").stdout), EXPERIMENT)
    assert shown, f"dvc exp show does not list {EXPERIMENT}"
    assert shown["data"]["params"]["params.yaml"]["data"]["report"]["bootstrap"] == 150
    shown_metrics = shown["data"]["metrics"]["metrics/report/report.headline.json"]["data"]
    assert json.dumps(shown_metrics, sort_keys=True) == json.dumps(exp_headline, sort_keys=True)
    applied = dvc(clone, "exp", "apply", EXPERIMENT)
    assert ran(applied.stdout) == set()
    assert yaml.safe_load((clone / "params.yaml").read_text())["report"]["bootstrap"] == 150
    assert_same_workspace(repo, clone)  # A's workspace holds the experiment's results
    status = json.loads(dvc(clone, "status", "--json").stdout or "{}")
    assert set(status) <= ALWAYS and all(v == ["always changed"] for v in status.values()), status
    after = dvc(clone, "repro")
    assert ran(after.stdout) == ALWAYS, after.stdout
    assert (clone / "metrics/report/report.json").read_bytes() == exp_report
    print("".join(f"{seconds:7.1f} s  {step}\n" for step, seconds in timeline))

    # The credentials came from the environment only: no config, output, log, artifact or commit holds them.
    secrets = [S3_ENV["AWS_ACCESS_KEY_ID"].encode(), S3_ENV["AWS_SECRET_ACCESS_KEY"].encode()]
    logs = (first, pushed, pulled, again, exp, exp_pushed, exp_pulled, applied, after)
    assert not any(secret in (p.stdout + p.stderr).encode() for p in logs for secret in secrets)
    for root in (repo, clone):
        # everything but git's objects and the copied tests (this file names the values)
        for path in (
            p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in (".git", "tests")
        ):
            data = path.read_bytes()
            assert not any(secret in data for secret in secrets), path
    history = subprocess.run(
        ["git", "log", "--all", "-p", "--", ".", ":!tests"], cwd=shared, capture_output=True, check=True
    ).stdout
    assert not any(secret in history for secret in secrets)


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
