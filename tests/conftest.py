"""Shared fixtures: a tiny tokenizer with a ChatML template and tiny random Llama models, built
in-process (no network), plus helpers to copy the repository for end-to-end `dvc repro` runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("SDD_DATA_MIRROR") or REPO.parent / "shared" / "datasets")

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72.",
    "Write a short poem about the sea. Give three tips for staying healthy.",
    "The quick brown fox jumps over the lazy dog 0123456789 + - * / = $ % #### .",
]


def build_tokenizer():
    """A byte-level BPE tokenizer (~400 tokens) with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def build_llama(tokenizer, num_layers: int = 6, seed: int = 0, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    # Random init gives tiny residual updates; scale them so layers actually matter.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(8)
            layer.mlp.down_proj.weight.mul_(8)
    return model.eval()


def save_tiny(path: Path, num_layers: int = 6, seed: int = 0) -> Path:
    tok = build_tokenizer()
    model = build_llama(tok, num_layers=num_layers, seed=seed)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def tokenizer():
    """A fresh tokenizer per test (cheap): stages set padding side/pad token on the object they get."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama (6 layers) with tokenizer and chat template."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "README.md").is_file():
        pytest.fail(f"dataset mirror not found at {MIRROR}; set SDD_DATA_MIRROR")
    return MIRROR


def copy_repo(dest: Path) -> Path:
    """Copy the tracked and untracked-not-ignored files into `dest`, as a fresh git + DVC repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/", "metrics/", "reports/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    if not (dest / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dest, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=dest, check=True)
    return dest


def run_dvc(repo: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=full_env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a mask an earlier in-process test left


def interruptible() -> dict:
    """Popen arguments for a stage a test will interrupt: its own process group (the signal reaches
    the stage and its children, not pytest), and Ctrl-C's default action, as in a terminal. A shell
    without job control (CI) starts background commands with SIGINT ignored; a child inherits that,
    and Python then never raises KeyboardInterrupt: the stage would run on to the end. A blocked
    SIGINT (the signal mask is inherited too) would stay pending the same way."""
    return {"start_new_session": True, "preexec_fn": _sigint_as_in_a_terminal}


def interrupt(proc: subprocess.Popen, ready, sig: int = signal.SIGKILL, timeout: float = 300) -> None:
    """Send `sig` to `proc`'s process group as soon as `ready()` holds (polled), and check the stage
    was stopped by it rather than finishing first. `proc` must be started with `**interruptible()`.
    SIGKILL is a crash or an OOM kill; SIGINT is Ctrl-C (the stage exits with 130)."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the stage finished before it could be interrupted; make it slower"
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate()
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 130
    tail = (out.decode(errors="replace") if isinstance(out, bytes) else out or "")[-3000:]
    assert proc.returncode == expected, (
        f"the stage ended with {proc.returncode} after {signal.Signals(sig).name}:\n{tail}"
    )


def dag_model(folder: Path) -> Path:
    """The tiny random Llama the whole-DAG runs use (6 layers, head_dim 64 for vLLM on CPU)."""
    tok = build_tokenizer()
    build_llama(tok, num_layers=6, seed=0, hidden=256).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def small_dag_params(params: dict, model: Path, mirror: Path) -> dict:
    """params.yaml's content changed so that every stage of dvc.yaml runs in minutes on 2 cores: the
    tiny model, 12 rows per dataset, hf generation, 2 training steps, 2 items per task."""
    params["base_model"] = {**params["base_model"], "source": str(model), "dtype": "float32"}
    params["data_mirror"] = str(mirror)
    for ds in params["datasets"].values():
        ds["limit"] = 12
    params["layer_scores"].update(samples=4, max_n=2, kl_n_layers=[2], shortlist=2, dtype="float32")
    params["prune"]["n_layers"] = 2
    engine = {"dtype": "float32", "max_model_len": 2048, "gpu_memory_utilization": 0.05, "enforce_eager": True}
    params["distill"].update(
        engine="hf", hf_batch_size=12, sampling={**params["distill"]["sampling"], "max_tokens": 16}
    )
    params["distill"]["engine_args"].update(engine)  # hf generate: the tiny tokenizer makes long prompts
    params["finetune"].update(max_steps=2, batch_size=4, eval_steps=2, save_steps=2, precision="fp32")
    params["evaluate"].update(
        tasks={"arc_challenge": {"shots": 0, "limit": 2}, "winogrande": {"shots": 0, "limit": 2}}, dtype="float32"
    )
    params["evaluate"]["fidelity"].update(max_new_tokens=4)
    # the tiny tokenizer makes long chat prompts: rows are cut at the model's 512 positions, not before the response
    params["evaluate"]["measures"].update(plain_tasks=["winogrande"], plain_rows=2, max_tokens=512)
    for prompts in params["evaluate"]["fidelity"]["prompts"].values():
        prompts["limit"] = 2
    params["report"]["bootstrap"] = 100
    params["speculate"].update(
        drafts={"pruned": "pruned"}, prompts={"datasets": ["gsm8k"], "per_dataset": 1, "max_tokens": 8}
    )
    params["speculate"]["engine_args"].update(engine, max_model_len=512)  # the tiny model's positions
    return params


# What the whole DAG needs on CPU: the mirror from params, vLLM in-process with a small KV cache.
PIPELINE_ENV = {"SDD_DATA_MIRROR": "", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
