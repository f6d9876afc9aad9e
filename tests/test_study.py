"""Study reports: stage times from logs, recovery and KL intervals, the SVG figures (a drawn mark for
every model), and `verify`: the committed report is exactly what its committed data gives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sdd import study
from sdd.plots import to_svg

from conftest import REPO


def test_stage_seconds_come_from_the_stage_logs_and_the_last_run_wins():
    first = "2026-11-30 18:48:14,542 sdd INFO distill@gsm8k done: rows=640, kept=0.28, seconds=373.71\nnoise\n"
    second = "2026-11-30 19:48:14,542 sdd INFO distill@gsm8k done: rows=640, seconds=12.5\n" + (
        "2026-11-30 19:49:00,000 sdd INFO report done: models=7, seconds=3.0\n"
    )
    assert study.stage_seconds([first, second]) == {"distill@gsm8k": 12.5, "report": 3.0}


def test_recovery_ci_is_the_ratio_of_task_means_with_a_paired_interval():
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"task": "arc", "subtask": "arc", "doc_id": range(400), "score": (rng.random(400) < 0.5) * 1.0})
    same = base.copy()
    boot = {"iterations": 500, "confidence": 0.95, "seed": 0}
    value, low, high = study.recovery_ci(same, base, ["arc"], boot)
    assert value == 1.0 and low == pytest.approx(1.0) and high == pytest.approx(1.0)  # paired: no spread at all
    worse = base.assign(score=base["score"] * (rng.random(400) < 0.8))
    value, low, high = study.recovery_ci(worse, base, ["arc"], boot)
    assert value == pytest.approx(worse["score"].mean() / base["score"].mean()) and low < value < high < 1.0


def test_kl_ci_and_the_interval_chart_draw_every_model():
    frame = pd.DataFrame({"kl_sum": [1.0, 2.0, 3.0, 4.0], "tokens": [10, 10, 10, 10]})
    kl, low, high = study.kl_ci(frame, {"iterations": 500, "confidence": 0.95, "seed": 0})
    assert kl == pytest.approx(0.25) and 0.1 <= low <= kl <= high <= 0.4
    rows = [
        {"model": m, "kl": v, "low": v - 0.01, "high": v + 0.01}
        for m, v in (("pruned", 1.1), ("sft", 0.9), ("sdd", 0.8))
    ]
    svg = to_svg(study.interval_chart(rows, "kl", "KL"))
    assert len(re.findall(r'aria-roledescription="point"', svg)) == 3
    assert all(f">{m}<" in svg for m in ("pruned", "sft", "sdd"))


def synthetic_study(folder: Path) -> None:
    """A study folder as `write` leaves it, for base, pruned and two seeds of one arm."""
    rng = np.random.default_rng(0)
    p = {"base": 0.6, "pruned": 0.5, "sft": 0.55, "sft_seed1": 0.56}
    samples, fidelity, measures, evals = [], [], [], {}
    for model, prob in p.items():
        rows = pd.DataFrame({"task": "arc_challenge", "subtask": "arc_challenge", "doc_id": range(60)})
        rows = rows.assign(model=model, doc_hash="", score=(rng.random(60) < prob) * 1.0, chance=0.25)
        rows = rows.assign(target="0", prediction="0", margin=rng.normal(prob - 0.5, 1, 60))
        samples.append(rows)
        kl = 0.0 if model == "base" else 1.0 - prob
        fidelity.append(
            pd.DataFrame({"prompt_set": "p", "id": [str(i) for i in range(8)], "tokens": 10}).assign(
                kl_sum=kl * 10, top1_sum=8.0, nll_sum=5.0, ref_nll_sum=5.0, model=model
            )
        )
        measures.append(
            pd.DataFrame({"measure": "gold_nll", "set": "val:x", "id": [str(i) for i in range(6)]}).assign(
                tokens=20, sum=20 * (2 - prob), model=model
            )
        )
        score = float(rows["score"].mean())
        task = {"score": score, "stderr": 0.06, "chance": 0.25, "n": 60, "shots": 0, "limit": 60, "fewshot_split": "x"}
        evals[model] = {
            "tasks": {"arc_challenge": task},
            "fidelity": {"kl": kl, "top1_agreement": 0.8, "perplexity": 1.6},
            "measures": {"gold_nll": {"value": 2 - prob}},
            "settings": {"lm_eval_version": "0.4.13", "backend": "hf", "dtype": "float32", "batch_size": 8,
                         "chat_template": False, "seed": 0},
        }  # fmt: skip
    folder.mkdir(parents=True)
    for name, frames in (("samples", samples), ("fidelity", fidelity), ("measures", measures)):
        pd.concat(frames, ignore_index=True).to_parquet(folder / f"{name}.parquet", index=False)
    run = {
        "title": "A synthetic study",
        "summary": "For the tests.",
        "command": "dvc exp run -n synthetic",
        "commit": "0" * 40,
        "machine": {"cores": 2, "device": "a CPU", "flags": ["avx2"], "ram_gib": 24},
        "preset": "finetune: {}",
        "evals": evals,
        "report": {"baseline": "base", "start": "pruned", "pairs": [["sft", "pruned"]]},
        "replicates": {"sft": ["sft_seed1"]},
        "bootstrap": {"iterations": 300, "confidence": 0.95, "seed": 0},
        "prune": None,
        "speculate": {},
        "distilled": {"datasets": {}, "arms": {"sft": {"train_rows": 10, "distilled_rows": 0, "share": 0.0}}},
        "training": {"sft": {"seed": 0, "steps": 8, "epochs": 1.0, "train_rows": 10, "tokens_seen": 1000,
                             "val_loss": 2.0, "val_original_loss": 2.0, "wall_seconds": 9.0}},
        "seconds": {"finetune@sft": 9.0},
    }  # fmt: skip
    (folder / "run.json").write_text(json.dumps(run))


def test_a_study_report_is_rendered_from_its_folder_and_verify_catches_any_change(tmp_path, capsys):
    folder = tmp_path / "studies" / "synthetic"
    synthetic_study(folder)
    study.write_report(folder, folder.with_suffix(".md"))
    text = folder.with_suffix(".md").read_text()
    assert text.startswith("# A synthetic study") and "| `sft` − `pruned` | sft, sft_seed1; pruned |" in text
    assert (folder / "recovery.svg").is_file() and (folder / "kl.svg").is_file()
    assert study.main(["verify", str(folder)]) == 0
    folder.with_suffix(".md").write_text(text.replace("A synthetic study", "A synthetic studie"))
    assert study.main(["verify", str(folder)]) == 1
    assert "-# A synthetic studie" in capsys.readouterr().out
    folder.with_suffix(".md").write_text(text)
    frame = pd.read_parquet(folder / "samples.parquet")
    frame.loc[0, "score"] = 1.0 - frame.loc[0, "score"]  # one item of the data changed
    frame.to_parquet(folder / "samples.parquet", index=False)
    assert study.main(["verify", str(folder)]) == 1


STUDIES = sorted((REPO / "reports" / "studies").glob("*.md"))


def has_data(report: Path) -> bool:
    return any((report.with_suffix("") / f).is_file() for f in ("run.json", "search.json"))


@pytest.mark.parametrize("report", [p for p in STUDIES if has_data(p)], ids=lambda p: p.stem)
def test_every_committed_study_is_what_its_committed_data_gives(report):
    from sdd import search

    folder = report.with_suffix("")
    check = search.main if (folder / "search.json").is_file() else study.main
    assert check(["verify", str(folder)]) == 0


def test_a_study_without_its_data_says_it_cannot_be_rechecked():
    assert any((p.with_suffix("") / "run.json").is_file() for p in STUDIES), "no study with committed data"
    for report in STUDIES:
        if not has_data(report):
            assert "cannot be recomputed" in report.read_text(), report


def _comparison(difference: float, low: float, high: float) -> dict:
    return {"difference": difference, "ci_low": low, "ci_high": high}


def test_a_recipe_search_is_written_from_its_experiment_refs_and_verified(tmp_path, monkeypatch):
    """Two search points as DVC stores them (a commit per experiment under refs/exps, its parent the
    baseline): the table shows what differs between them and each difference with its CI; an edited
    figure in search.json fails verify."""
    import subprocess

    import yaml

    from sdd import search

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "params.yaml").write_text("x: 1\n")
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "baseline"], cwd=repo, check=True)
    for name, lr, margin in (("search-a", 2e-4, (-0.01, -0.02, -0.005)), ("search-b", 2e-5, (0.004, 0.001, 0.007))):
        params = {"finetune": {"arms": {"search": {"data": {"gsm8k": "original"}}}, "learning_rate": lr, "epochs": 1}}
        (repo / "params.yaml").write_text(yaml.safe_dump(params) + "report: {start: pruned}\n")
        comparison = {
            "above_chance": _comparison(-0.004, -0.02, 0.012),
            "margin": _comparison(*margin),
            "measures": {"gold_nll": _comparison(-0.1, -0.12, -0.08), "plain_kl": _comparison(0.01, 0.005, 0.02)},
            "fidelity": {"kl": _comparison(-0.05, -0.06, -0.04)},
        }
        for folder in ("report", "finetune"):
            (repo / "metrics" / folder).mkdir(parents=True, exist_ok=True)
        models = {"search": {"recovery_above_chance": 0.93}, "pruned": {"recovery_above_chance": 0.95}}
        (repo / "metrics/report/report.json").write_text(
            json.dumps({"comparisons": {"search-pruned": comparison}, "models": models})
        )
        (repo / "metrics/finetune/search.json").write_text(json.dumps({"val_original_loss": 1.25, "steps": 38}))
        subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
        subprocess.run(git + ["commit", "-qm", name], cwd=repo, check=True)
        subprocess.run(["git", "update-ref", f"refs/exps/ab/cdef/{name}", "HEAD"], cwd=repo, check=True)
        subprocess.run(["git", "reset", "-q", "--hard", "HEAD~1"], cwd=repo, check=True)
    (repo / "preset.yaml").write_text("finetune: {epochs: 1}\n")
    monkeypatch.chdir(repo)
    out = repo / "reports/search.md"
    out.parent.mkdir()
    args = ["write", "--exp", "search-a", "--exp", "search-b", "--out", str(out), "--preset", "preset.yaml"]
    assert search.main([*args, "--command", "dvc exp run ...", "--title", "A search"]) == 0
    text = out.read_text()
    assert "| point | `learning_rate` |" in text  # only the key that differs is a column
    assert "| `search-a` | 0.0002 | -0.40 [-2.00, +1.20] | -0.010 [-0.020, -0.005] ✗ |" in text
    assert "| `search-b` | 2e-05 | -0.40 [-2.00, +1.20] | +0.004 [+0.001, +0.007] ✓ |" in text
    assert "-0.1000 [-0.1200, -0.0800] ✓ | +0.0100 [+0.0050, +0.0200] ✗ | -0.0500 [-0.0600, -0.0400] ✓ |" in text
    assert text.count("| 93.0% (95.0%) |") == 2
    assert search.main(["verify", str(out.with_suffix(""))]) == 0
    assert study.main(["verify", str(out.with_suffix(""))]) == 1  # a search is not a study: it says which command
    data = json.loads((out.with_suffix("") / "search.json").read_text())
    data["points"][1]["comparison"]["margin"]["difference"] = 0.005
    (out.with_suffix("") / "search.json").write_text(json.dumps(data))
    assert search.main(["verify", str(out.with_suffix(""))]) == 1
