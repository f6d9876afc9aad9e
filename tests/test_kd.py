"""Logit distillation: the teacher-logits artifact (top-k of a direct forward, contract checks), the
KD loss (hand-computed value, alpha = 0, teacher = student), a KD arm that moves the student toward
the teacher more than SFT on the same rows, the last-layers method, and resume after a kill."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from test_finetune import make_project, run_stage

from sdd.artifacts import read_json
from sdd.config import load_params
from sdd.data.examples import encode_rows
from sdd.errors import InputError
from sdd.model import teacher
from sdd.model.checkpoint import load_model
from sdd.model.logits import kl_per_token, topk_kd_loss
from sdd.model.recipe import dataset_rows, read_arm
from stages import finetune, teacher_logits

from conftest import interrupt, interruptible, save_tiny


def kd_project(root: Path, **finetune_params) -> Path:
    """make_project's data and pruned model, plus a base model (the teacher, 6 layers, other
    weights) and small teacher_logits settings: k = 8, packs of 256 tokens, 5 rows per shard."""
    make_project(root, **finetune_params)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["teacher_logits"] = {**params["teacher_logits"], "top_k": 8, "batch_tokens": 256, "rows_per_shard": 5}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    save_tiny(root / "data/models/base", num_layers=6, seed=1)
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(kd_project(tmp_path))
    for ds in ("gsm8k", "alpaca"):
        teacher_logits.main([ds])
        teacher_logits.main([ds, "--distilled"])
    return tmp_path


def test_artifact_matches_a_direct_forward(project):
    params = load_params()
    paths = params.paths
    store = teacher.TeacherStore.open(paths.teacher_dir("gsm8k", "distilled"), "teacher_logits_distilled@gsm8k")
    assert store.top_k == 8 and len(store.manifest["shards"]) == 3  # 12 rows, 5 per shard
    model, tok = load_model(paths.model_dir("base"))
    rows = dataset_rows(paths, "gsm8k", "distilled")
    examples = encode_rows(rows, tok, 10_000, "truncate", params.finetune.rendering)[0]  # as the stage renders them
    assert [r for s in store.manifest["shards"] for r in s["ids"]] == [e["id"] for e in examples]
    for ex in examples:
        with torch.no_grad():  # one example alone, full vocabulary: no packing, no logits_to_keep
            logp = torch.log_softmax(model(torch.tensor([ex["input_ids"]])).logits[0].float(), -1)
        positions = teacher.response_positions(ex["labels"])
        expected_values, expected_ids = logp[positions].topk(8, dim=-1)
        row = store.get(ex["id"])
        assert row.tokens.tolist() == [ex["labels"][j + 1] for j in positions]
        assert torch.equal(row.topk_ids.long(), expected_ids)
        torch.testing.assert_close(row.topk_logprobs.float(), expected_values, atol=2e-3, rtol=1e-3)  # float16
        rest = torch.log1p(-expected_values.exp().sum(-1).clamp_max(1 - 1e-7))
        torch.testing.assert_close(row.rest_logmass, rest, atol=1e-4, rtol=1e-4)
    metrics = read_json(paths.metrics_file("teacher_logits", "gsm8k.distilled"))
    assert metrics["rows"] == 12 and metrics["response_tokens"] == store.manifest["tokens"] > 0


def test_a_rerun_reuses_finished_shards_and_a_bad_shard_is_named(project):
    paths = load_params().paths
    folder = paths.teacher_dir("alpaca", "original")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    teacher_logits.main(["alpaca"])
    assert read_json(paths.metrics_file("teacher_logits", "alpaca.original"))["shards_reused"] == 3
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before  # same bytes: deterministic
    (folder / "shard-00001.safetensors").write_bytes(b"not a shard")
    with pytest.raises(
        InputError, match=r"shard-00001\.safetensors: unreadable .*re-run `dvc repro teacher_logits@alpaca`"
    ):
        teacher.TeacherStore.open(folder, "teacher_logits@alpaca")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "top_k": 4}))
    (folder / "shard-00001.safetensors").write_bytes(before["shard-00001.safetensors"])
    with pytest.raises(InputError, match=r"not a valid teacher-logits shard: top-k tensors are \(\d+, 8\), expected"):
        teacher.TeacherStore.open(folder, "teacher_logits@alpaca")


def test_kd_arm_without_teacher_logits_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(kd_project(tmp_path))
    with pytest.raises(
        InputError, match=r"data/teacher/(\w+)/original/manifest\.json not found; run `dvc repro teacher_logits@\1`"
    ):
        finetune.main(["kd"])
    assert not (tmp_path / ".sdd-scratch/finetune/kd/checkpoints").exists()


def test_kd_loss_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5], [0.0, 0.0, 3.0, 1.0, -2.0]])
    targets = torch.tensor([0, 3])
    teacher_p = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05], [0.1, 0.1, 0.6, 0.1, 0.1]])
    ids = torch.tensor([[0, 1], [2, 0]])
    top = teacher_p.gather(-1, ids).log()
    rest = torch.log(1 - teacher_p.gather(-1, ids).sum(-1))

    def by_hand(i: int, alpha: float) -> float:
        q = [math.exp(v) for v in logits[i].tolist()]
        q = [v / sum(q) for v in q]
        k = ids[i].tolist()
        s = [q[k[0]], q[k[1]], 1 - q[k[0]] - q[k[1]]]
        t = [
            teacher_p[i, k[0]].item(),
            teacher_p[i, k[1]].item(),
            1 - teacher_p[i, k[0]].item() - teacher_p[i, k[1]].item(),
        ]
        kl = sum(a * math.log(a / b) for a, b in zip(t, s))
        return alpha * kl + (1 - alpha) * -math.log(q[targets[i]])

    loss = topk_kd_loss(logits, targets, ids, top, rest, alpha=0.7, temperature=1.0)
    assert loss.tolist() == pytest.approx([by_hand(0, 0.7), by_hand(1, 0.7)], rel=1e-5)
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(topk_kd_loss(logits, targets, ids, top, rest, alpha=0.0, temperature=2.0), ce)
    own_ids, own_top, own_rest = teacher.topk_logprobs(logits, 2)  # the teacher is the student itself
    for temperature in (1.0, 2.0):
        kd = topk_kd_loss(logits, targets, own_ids, own_top, own_rest, alpha=1.0, temperature=temperature)
        torch.testing.assert_close(kd, torch.zeros(2), atol=1e-6, rtol=0)
    kd_t2 = topk_kd_loss(logits, targets, ids, top, rest, alpha=1.0, temperature=2.0)
    assert (kd_t2 > 0).all() and torch.isfinite(kd_t2).all()


def held_out_kl(paths, model_dir: Path) -> float:
    """Mean full-vocabulary KL(base || model) on the response tokens of the held-out rows."""
    base, tok = load_model(paths.model_dir("base"))
    model, _ = load_model(model_dir)
    _, val, _ = read_arm(paths, {"gsm8k": "original", "alpaca": "original"}, 0.1, seed=0)
    kls = []
    for ex in encode_rows(val, tok, 128, "truncate", load_params().finetune.rendering)[0]:  # as the arms trained
        ids, positions = torch.tensor([ex["input_ids"]]), teacher.response_positions(ex["labels"])
        with torch.no_grad():
            kls.append(kl_per_token(base(ids).logits[0, positions], model(ids).logits[0, positions]))
    return float(torch.cat(kls).mean())


@pytest.mark.slow
def test_kd_moves_the_student_toward_the_teacher_more_than_sft(tmp_path, monkeypatch):
    monkeypatch.chdir(kd_project(tmp_path, max_steps=12, kd={"alpha": 1.0, "temperature": 1.0}))
    for ds in ("gsm8k", "alpaca"):
        teacher_logits.main([ds])
    paths = load_params().paths
    for arm in ("sft", "kd"):
        finetune.main([arm])
    pruned, sft, kd = (held_out_kl(paths, paths.model_dir(m)) for m in ("pruned", "finetuned/sft", "finetuned/kd"))
    # Same rows, steps, optimizer and seed: only the objective differs.
    assert (
        read_json(paths.metrics_file("finetune", "kd"))["tokens_seen"]
        == read_json(paths.metrics_file("finetune", "sft"))["tokens_seen"]
    )
    assert kd < pruned and kd < sft, (pruned, sft, kd)


def test_last_layers_changes_only_the_named_parameters(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(make_project(tmp_path, max_steps=2, learning_rate=1e-2, last_layers={"n": 2}))
    paths = load_params().paths
    finetune.main(["sft_last3"])
    before = load_file(paths.model_dir("pruned") / "model.safetensors")
    after = load_file(paths.model_dir("finetuned/sft_last3") / "model.safetensors")
    trained = {k for k in before if k.startswith(("model.layers.2.", "model.layers.3.", "model.norm.", "lm_head."))}
    if json.loads((paths.model_dir("pruned") / "config.json").read_text()).get("tie_word_embeddings"):
        trained |= {"model.embed_tokens.weight"}  # tied: the LM head IS the input embedding matrix
    assert trained <= before.keys() and before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trained
    metrics = read_json(paths.metrics_file("finetune", "sft_last3"))
    assert metrics["method"] == "last_layers" and 0 < metrics["trainable_share"] < 1
    assert not (paths.model_dir("finetuned/sft_last3") / "adapter").exists()


def test_last_layers_more_than_the_model_has_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.chdir(make_project(tmp_path, last_layers={"n": 9}))
    with pytest.raises(InputError, match=r"finetune\.last_layers\.n=9 but the model has 4 decoder layers"):
        finetune.main(["sft_last3"])


@pytest.mark.slow
def test_killed_kd_run_resumes_to_the_uninterrupted_result(tmp_path):
    """One run killed right after its first checkpoint and re-run equals a run never interrupted."""
    from safetensors.torch import load_file

    settings = {"max_steps": 40, "save_steps": 4, "eval_steps": 1000, "batch_size": 2}
    runs = {}
    for name in ("whole", "killed"):
        root = tmp_path / name
        root.mkdir()
        kd_project(root, **settings)
        for ds in ("gsm8k", "alpaca"):
            assert run_stage(root, ds, module="stages.teacher_logits").wait(timeout=600) == 0
        if name == "killed":
            checkpoints = root / ".sdd-scratch/finetune/kd/checkpoints"
            proc = run_stage(root, "kd", **interruptible())
            first = checkpoints / "checkpoint-4/trainer_state.json"
            interrupt(proc, first.is_file)
            assert not (root / "metrics/finetune/kd.json").exists(), "the run ended before it was killed"
        proc = run_stage(root, "kd")
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        runs[name] = (
            read_json(root / "metrics/finetune/kd.json"),
            load_file(root / "data/models/finetuned/kd/model.safetensors"),
        )
    (whole, whole_weights), (killed, killed_weights) = runs["whole"], runs["killed"]
    assert killed["resumed_from_step"] >= 4 and whole["resumed_from_step"] is None
    assert killed["steps"] == whole["steps"] == 40 and killed["tokens_seen"] == whole["tokens_seen"]
    assert killed["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-5)
    for key, value in whole_weights.items():
        torch.testing.assert_close(killed_weights[key], value, atol=1e-6, rtol=1e-5)
