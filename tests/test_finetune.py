"""finetune@<arm>: response-only labels, identical arms, LoRA/full training on a tiny Llama, the
merged checkpoint, bad input, two gloo processes (DDP and FSDP) against one, and resume after a kill."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sdd.artifacts import read_json, to_frame, write_parquet
from sdd.config import load_params
from sdd.data.chat import user_message
from sdd.data.examples import IGNORE, encode_rows, split_by_id
from sdd.data.schemas import DISTILLED, PREPARED
from sdd.errors import InputError
from sdd.model import launch, progress, recipe
from sdd.model import training as ft
from sdd.presets import apply_preset
from stages import finetune as stage

from conftest import REPO, interrupt, interruptible, save_tiny

QUESTIONS = [
    "How many clips did Natalia sell altogether in April and May?",
    "Write a short poem about the sea.",
    "Give three tips for staying healthy.",
    "Natalia sold clips to 48 of her friends in April.",
    "The quick brown fox jumps over the lazy dog.",
    "How many clips did Natalia sell in May?",
]
ANSWERS = [
    "Natalia sold 48 clips in April and 24 in May. The answer is 72.\n#### 72",
    "The sea is quick and brown, the fox jumps over the lazy dog.",
    "Sell clips, write a poem, and jump.",
    "She sold half as many clips in May.\n#### 24",
    "The answer is 0123456789.",
    "#### 24",
]

ARMS = yaml.safe_load((REPO / "presets" / "arms.yaml").read_text())  # every arm the project ships
TINY_FINETUNE = {
    "max_steps": 6,
    "batch_size": 4,
    "learning_rate": 0.01,
    "eval_steps": 3,
    "save_steps": 3,
    "precision": "fp32",
    "save_dtype": "float32",
    "max_seq_len": 128,
    "warmup_ratio": 0.0,
    "lora": {"rank": 4, "alpha": 8},
}


def rows(ds: str, n: int = 12) -> list[dict]:
    return [
        {
            "id": hashlib.sha256(f"{ds}{i}".encode()).hexdigest()[:16],
            "dataset": ds,
            "instruction": QUESTIONS[i % 6],
            "context": "April and May" if i % 3 == 0 else "",
            "response": ANSWERS[i % 6],
            "answer": None,
        }
        for i in range(n)
    ]


def distilled(ds: str) -> list[dict]:
    return [
        {
            **r,
            "response_original": r["response"],
            "response_distilled": r["response"].upper(),
            "response": r["response"].upper(),
            "selected": "distilled",
            "reason": "accepted",
            "finish_reason": "stop",
            "prompt_tokens": 10,
            "generated_tokens": 10,
        }
        for r in rows(ds)
    ]


def make_project(root: Path, **finetune) -> Path:
    """A working directory with params.yaml, prepared + distilled Parquet and a tiny pruned model."""
    params = apply_preset(yaml.safe_load((REPO / "params.yaml").read_text()), ARMS)  # every shipped arm
    params["finetune"] = {**params.get("finetune", {}), **TINY_FINETUNE, **finetune}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    paths = load_params(root / "params.yaml").paths
    for ds in ("gsm8k", "alpaca"):
        write_parquet(to_frame(rows(ds), PREPARED), root / paths.prepared_file(ds), PREPARED)
        write_parquet(to_frame(distilled(ds), DISTILLED), root / paths.distilled_file(ds), DISTILLED)
    save_tiny(root / paths.model_dir("pruned"), num_layers=4)
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(make_project(tmp_path))
    return tmp_path


def test_labels_ignore_exactly_prompt_and_padding(tokenizer):
    examples, counts = encode_rows(rows("gsm8k", 2), tokenizer, max_seq_len=512, overlong="truncate")
    assert counts["kept"] == 2
    batch = ft.collator(tokenizer, "padded")([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
    for i, row in enumerate(rows("gsm8k", 2)):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(row["instruction"], row["context"])}],
            tokenize=False,
            add_generation_prompt=True,
        )
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        n_real = int(batch["attention_mask"][i].sum())
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert (labels[:n_prompt] == IGNORE).all()
        assert torch.equal(labels[n_prompt:n_real], ids[n_prompt:n_real])  # every response token is learned
        assert (labels[n_real:] == IGNORE).all()
        assert tokenizer.decode(ids[n_prompt:n_real]).startswith(row["response"])
        assert ids[n_real - 2] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # the end of turn is learned
    flat = ft.collator(tokenizer, "padding_free")([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    assert (flat["position_ids"][0] == 0).sum() == 2  # positions restart per example: a block-diagonal mask


def test_padding_free_batches_keep_each_example_to_itself(tiny_model_dir, tokenizer):
    """Packed examples (position ids restarting) give the logits each example gives alone, in the
    training set-up: transformers only isolates them when the model runs without a KV cache."""
    from transformers import AutoModelForCausalLM

    params = load_params(REPO / "params.yaml")
    model = ft.apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), params.finetune, "full")
    model.train()
    examples = encode_rows(rows("gsm8k", 3), tokenizer, 128, "truncate")[0]
    batch = ft.collator(tokenizer, "padding_free")([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        start = 0
        for ex in examples:
            alone = model(torch.tensor([ex["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[start : start + len(alone)], alone, atol=1e-5, rtol=1e-5)
            start += len(alone)


def test_overlong_rows_are_counted_and_handled(tokenizer):
    kept, counts = encode_rows(rows("gsm8k", 6), tokenizer, max_seq_len=40, overlong="truncate")
    assert counts["overlong"] == counts["truncated"] + counts.get("dropped_prompt_too_long", 0) > 0
    assert all(len(e["input_ids"]) <= 40 for e in kept)
    _, counts = encode_rows(rows("gsm8k", 6), tokenizer, max_seq_len=40, overlong="drop")
    assert counts["dropped_overlong"] == counts["overlong"] and counts["kept"] == 6 - counts["overlong"]


def test_default_arms_differ_only_in_data(tmp_path):
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(apply_preset(yaml.safe_load((REPO / "params.yaml").read_text()), ARMS))
    )
    params = load_params(tmp_path / "params.yaml")
    assert set(params.finetune.arms) >= {"sft", "sdd"}
    resolved = {}
    for arm in params.finetune.arms:
        spec, args = recipe.resolved(params, arm, tmp_path / arm, "cpu")
        training = {k: v for k, v in args.to_dict().items() if k not in ("output_dir", "logging_dir", "run_name")}
        resolved[arm] = (spec, training)
    assert all(training == resolved["sft"][1] for _, training in resolved.values())  # KD and last-layers arms too
    assert resolved["sft"][0].data == {"gsm8k": "original", "alpaca": "original"}
    assert resolved["sdd"][0].data == {"gsm8k": "distilled", "alpaca": "distilled"}
    assert set(resolved["sft"][0].data) == set(resolved["sdd"][0].data)
    # The arms that add an objective or a method use the same rows as their counterparts.
    assert (resolved["kd"][0].data, resolved["kd"][0].objective) == (resolved["sft"][0].data, "kd")
    assert (resolved["kd_sdd"][0].data, resolved["kd_sdd"][0].objective) == (resolved["sdd"][0].data, "kd")
    assert resolved["sft_last3"][0].data == resolved["sft"][0].data
    assert resolved["sft_last3"][0].method == "last_layers" and resolved["sft"][0].method is None  # None: shared
    # The held-out rows depend on the ids only, so both arms validate on the same rows.
    ids = [r["id"] for r in rows("gsm8k", 40)]
    assert split_by_id(ids, 0.1, seed=0) == split_by_id(list(reversed(ids)), 0.1, seed=0)
    assert len(split_by_id(ids, 0.1, seed=0)) == 4


def test_validation_and_checkpoint_intervals_follow_the_run_length():
    from sdd.config.finetune import FinetuneParams

    demo = FinetuneParams(max_steps=8)  # every 4 steps (validation at 4 and 8)
    epoch = FinetuneParams(max_steps=None, epochs=1, batch_size=8)  # 540 rows -> 68 steps: every 17
    assert ft.total_steps(demo, 540) == 8 and ft.total_steps(epoch, 540) == 68
    assert ft.total_steps(epoch.model_copy(update={"grad_accum": 2}), 540) == 34
    assert ft.total_steps(epoch, 540, world_size=2) == 34
    args = ft.training_arguments(epoch, "/tmp/x", "cpu", steps=68)
    assert (args.eval_steps, args.save_steps) == (17, 17)
    args = ft.training_arguments(demo.model_copy(update={"eval_steps": 3}), "/tmp/x", "cpu", steps=8)
    assert (args.eval_steps, args.save_steps) == (3, 3)  # an explicit value wins, checkpoints follow it


@pytest.mark.parametrize(
    "arm,error",
    [
        (
            {"data": {"gsm8j": "original"}},
            r"finetune\.arms\.bad\.data\.gsm8j: unknown dataset \(did you mean 'gsm8k'\?\)",
        ),
        (
            {"data": {"gsm8k": "distiled"}},
            r"finetune\.arms\.bad\.data\.gsm8k: Input should be 'original' or 'distilled'",
        ),
        ({"gsm8k": "original"}, r"finetune\.arms\.bad: .*an arm lists its datasets under `data`"),
        (
            {"data": {"gsm8k": "original"}, "objective": "kl"},
            r"finetune\.arms\.bad\.objective: Input should be 'sft' or 'kd'",
        ),
        ({"data": {}}, r"finetune\.arms\.bad\.data: .*at least 1 item"),
    ],
)
def test_bad_arm_fails_at_params_load(tmp_path, arm, error):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.setdefault("finetune", {}).setdefault("arms", {})["bad"] = arm
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=error):
        load_params(tmp_path / "params.yaml")


def test_missing_distilled_data_fails_before_training(project):
    (project / load_params().paths.distilled_file("alpaca")).unlink()
    with pytest.raises(FileNotFoundError, match=r"alpaca\.parquet not found; run `dvc repro distill@alpaca`"):
        stage.main(["sdd"])
    with pytest.raises(ValueError, match=r"'sfd' is not in finetune.arms \(did you mean 'sft'\?\)"):
        stage.main(["sfd"])
    assert not (project / ".sdd-scratch" / "finetune" / "sdd" / "checkpoints").exists()


def test_lora_trains_adapter_only_and_merged_checkpoint_equals_base_plus_adapter(project):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    params = load_params()
    base_dir, out = params.paths.model_dir("pruned"), params.paths.model_dir("finetuned/sdd")
    model = ft.apply_method(AutoModelForCausalLM.from_pretrained(base_dir), params.finetune)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    stage.main(["sdd"])
    metrics = read_json(params.paths.metrics_file("finetune", "sdd"))
    assert metrics["steps"] == 6 and metrics["tokens_seen"] > 0 and metrics["tokens_per_second"] > 0
    assert 0 < metrics["share_outside_optimizer_steps"] < 1 and metrics["eval_steps"] == 3
    assert metrics["val_rows"] == 2 and metrics["train_rows"] == 22
    assert (
        metrics["val_loss"] > 0
        and metrics["val_original_loss"] > 0
        and metrics["val_loss"] != metrics["val_original_loss"]
    )
    losses = [
        float(line.split("\t")[-1])
        for line in (Path("metrics/finetune/sdd/train/loss.tsv")).read_text().splitlines()[1:]
    ]
    assert len(losses) == 6 and losses[-1] < losses[0]  # the loss goes down
    assert Path("metrics/finetune/sdd/val/loss.tsv").is_file()

    ids = torch.tensor([[1, 5, 9, 40, 77, 120, 3]])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        a, b, c = merged(ids).logits, with_adapter(ids).logits, base(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (a - c).abs().max() > 1e-2  # training changed the model
    assert merged.get_output_embeddings() is not None and (out / "chat_template.jinja").is_file()


def test_two_fresh_runs_train_identical_weights(tmp_path, monkeypatch):
    """The LoRA init is seeded: two fresh runs in one process (different RNG states) end equal."""
    weights = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(make_project(tmp_path / name, max_steps=2))
        torch.rand(7)  # whatever ran before must not matter
        stage.main(["sft"])
        weights.append((tmp_path / name / "data/models/finetuned/sft/model.safetensors").read_bytes())
    assert weights[0] == weights[1]


def test_full_finetuning_changes_every_tensor(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(make_project(tmp_path, method="full", max_steps=2, learning_rate=1e-3))
    paths = load_params().paths
    stage.main(["sft"])
    before = load_file(paths.model_dir("pruned") / "model.safetensors")
    after = load_file(paths.model_dir("finetuned/sft") / "model.safetensors")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"full fine-tuning left {unchanged} unchanged"
    assert not (paths.model_dir("finetuned/sft") / "adapter").exists()


def run_stage(cwd: Path, arm: str, module: str = "stages.finetune", **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", module, arm],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def loss_curve(root: Path, arm: str = "sft") -> list[float]:
    lines = (root / f"metrics/finetune/{arm}/train/loss.tsv").read_text().splitlines()[1:]
    return [float(line.split("\t")[1]) for line in lines]


def run_processes(root: Path, processes: int, config: str) -> dict:
    """finetune@sft with an effective batch of 4 rows: 1 process x 4, or `processes` x 4 / processes."""
    root.mkdir()
    make_project(
        root,
        num_processes=processes,
        batch_size=4 // processes,
        max_steps=3,
        accelerate_config=str(REPO / f"configs/accelerate/{config}.yaml"),
    )
    proc = run_stage(root, "sft")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert (f"launching {processes} processes" in out) == (processes > 1), out
    metrics = read_json(root / "metrics/finetune/sft.json")
    assert metrics["num_processes"] == processes and metrics["steps"] == 3
    assert (root / "data/models/finetuned/sft/adapter/adapter_config.json").is_file()
    return metrics


def assert_same_run(root: Path, reference: Path) -> None:
    """The same loss curve and merged weights within float tolerance: the rows of each step are the
    same, only the order of the reductions differs."""
    assert loss_curve(root) == pytest.approx(loss_curve(reference), rel=1e-4)
    expected = load_file(reference / "data/models/finetuned/sft/model.safetensors")
    weights = load_file(root / "data/models/finetuned/sft/model.safetensors")
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_two_gloo_ddp_processes_follow_the_one_process_run(tmp_path):
    run_processes(tmp_path / "one", 1, "ddp")
    assert run_processes(tmp_path / "ddp", 2, "ddp")["sharding"] is None
    assert_same_run(tmp_path / "ddp", tmp_path / "one")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP under accelerate needs 2 GPUs")
def test_two_fsdp_processes_follow_the_one_process_run(tmp_path):
    run_processes(tmp_path / "one", 1, "ddp")
    assert run_processes(tmp_path / "fsdp", 2, "fsdp")["sharding"] == "fsdp"
    assert_same_run(tmp_path / "fsdp", tmp_path / "one")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal on a machine without GPUs")
def test_fsdp_on_cpu_is_refused_not_run_as_ddp(project):
    Path("my_sharding.yaml").write_text((REPO / "configs/accelerate/fsdp.yaml").read_text())  # FSDP by content
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["finetune"].update(num_processes=2, accelerate_config="my_sharding.yaml")
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match="my_sharding.yaml asks for FSDP, which accelerate runs only on GPUs"):
        stage.main(["sft"])


def test_training_across_machines_needs_the_launchers_address_and_rank():
    assert launch.machine(1, {}) == (0, None, None)
    env = {"SLURM_NODEID": "1", "MASTER_ADDR": "node-a", "MASTER_PORT": "29600"}
    assert launch.machine(2, env) == (1, "node-a", 29600)
    with pytest.raises(ValueError, match="num_machines=2 needs MASTER_ADDR"):
        launch.machine(2, {"SLURM_NODEID": "1"})


def test_a_missing_accelerate_config_is_named(project):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["finetune"].update(num_processes=2, accelerate_config="configs/accelerate/zero3.yaml")
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match="finetune.accelerate_config: configs/accelerate/zero3.yaml does not exist"):
        stage.main(["sft"])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_resume_after_kill(tmp_path, sig):
    make_project(tmp_path, max_steps=120, save_steps=4, eval_steps=1000, batch_size=2)
    checkpoints = tmp_path / ".sdd-scratch/finetune/sft/checkpoints"
    proc = run_stage(tmp_path, "sft", **interruptible())
    # interrupted right after the first checkpoint: the rest of the run is the window
    interrupt(proc, lambda: (checkpoints / "checkpoint-4" / "trainer_state.json").is_file(), sig)
    assert list(checkpoints.glob("checkpoint-*")), "no checkpoint was written before the kill"
    assert not (tmp_path / "metrics/finetune/sft.json").exists()
    # a half-written checkpoint is skipped
    killed_at = progress.checkpoint_step(
        progress.last_complete_checkpoint(checkpoints)
    )  # a half-written one is skipped
    assert killed_at < 120

    proc = run_stage(tmp_path, "sft")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    metrics = read_json(tmp_path / "metrics/finetune/sft.json")
    assert metrics["resumed_from_step"] >= killed_at >= 4 and metrics["steps"] == 120
    steps = [
        int(line.split("\t")[0])
        for line in (tmp_path / "metrics/finetune/sft/train/loss.tsv").read_text().splitlines()[1:]
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 120  # the curve continues without duplicate points


def test_dvc_stage_tracks_every_shared_setting():
    """A training knob missing from dvc.yaml would not re-run the arms when it changes."""
    from sdd.config.finetune import FinetuneParams

    stage_params = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["finetune"]["do"]["params"]
    shared = {f"finetune.{name}" for name in FinetuneParams.model_fields if name != "arms"}
    assert shared <= set(stage_params), f"add {sorted(shared - set(stage_params))} to dvc.yaml finetune params"
    assert "finetune" not in stage_params and "finetune.arms.${key}" in stage_params


@pytest.mark.slow
def test_rerun_after_a_finished_run_trains_exactly_max_steps(tmp_path):
    """save_steps divides max_steps, so the last checkpoint is the final step. A re-run (DVC deleted
    the output, e.g. after a code change) must not train past max_steps from it (transformers does
    one extra step when resuming there): it resumes from the checkpoint before and ends identical."""
    make_project(tmp_path)  # max_steps 6, save_steps 3: checkpoints 3 and 6
    first = run_stage(tmp_path, "sft")
    assert first.wait(timeout=600) == 0, first.stdout.read()
    before = read_json(tmp_path / "metrics/finetune/sft.json")
    weights = (tmp_path / "data/models/finetuned/sft/model.safetensors").read_bytes()
    files = folder_bytes(tmp_path / "data/models/finetuned/sft")
    assert (tmp_path / ".sdd-scratch/finetune/sft/checkpoints/checkpoint-6").is_dir()

    again = run_stage(tmp_path, "sft")
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    after = read_json(tmp_path / "metrics/finetune/sft.json")
    assert after["resumed_from_step"] == 3 and after["steps"] == before["steps"] == 6
    assert after["val_loss"] == before["val_loss"] and after["tokens_seen"] == before["tokens_seen"]
    assert (tmp_path / "data/models/finetuned/sft/model.safetensors").read_bytes() == weights
    assert files == folder_bytes(tmp_path / "data/models/finetuned/sft")  # the adapter's config too: same digest
    assert 0 < after["tokens_per_second"] and after["tokens_seen"] == before["tokens_seen"]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_resumed_runs_throughput_counts_its_own_tokens(tmp_path):
    assert progress.tokens_at(None) == 0
    (tmp_path / "checkpoint-114").mkdir()
    (tmp_path / "checkpoint-114" / "trainer_state.json").write_text(
        '{"global_step": 114, "num_input_tokens_seen": 133306}'
    )
    assert progress.tokens_at(str(tmp_path / "checkpoint-114")) == 133306


SAVE_ADAPTER = """
import json
import sys
from pathlib import Path
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from sdd.model.checkpoint import save_adapter
config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=modules))
out = Path(sys.argv[1])
model.save_pretrained(out / "peft")
save_adapter(model, out / "ours")
print(json.dumps({how: (out / how / "adapter_config.json").read_text() for how in ("peft", "ours")}))
"""


def test_the_same_adapter_is_saved_as_the_same_files_whatever_the_hash_seed(tmp_path):
    """peft writes target_modules in set order, which follows PYTHONHASHSEED (hash seeds 0 and 1
    give two orders); save_adapter writes the same file in every process, so an unchanged model
    keeps its digest and nothing after it re-runs."""

    def saved(seed: int) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": str(seed)}
        cmd = [sys.executable, "-c", SAVE_ADAPTER, str(tmp_path / str(seed))]
        return json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)

    first, second = saved(0), saved(1)
    assert first["peft"] != second["peft"], "peft now writes a stable order: save_adapter's sorting can go"
    assert first["ours"] == second["ours"]
    assert '"target_modules": [\n    "down_proj",\n    "gate_proj",' in first["ours"]
