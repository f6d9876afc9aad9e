"""The six leaderboard tasks are lm-eval's registered configs reading the mirror's rows: these tests pin
the prompt, choices and target they render (lm-eval's tasks/{arc,hellaswag,mmlu,truthfulqa,winogrande,
gsm8k}), so a new lm-eval release that changes a prompt fails here before it changes a result."""

from __future__ import annotations

import pytest

from sdd.eval import tasks as eval_tasks


@pytest.fixture
def load():
    def _load(task: str, shots: int, mirror, subjects=None) -> dict:
        return eval_tasks.build(eval_tasks.task_configs(task, shots, mirror, subjects))

    return _load


def render(task, doc):
    choices = task.doc_to_choice(doc) if task.OUTPUT_TYPE == "multiple_choice" else None
    return task.doc_to_text(doc), choices, task.doc_to_target(doc)


def test_arc_challenge(mirror, load):
    task = load("arc_challenge", 25, mirror)["arc_challenge"]
    text, choices, target = render(task, task.eval_docs[0])
    assert text == (
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\nAnswer:"
    )
    assert choices == [
        "Planetary density will decrease.",
        "Planetary years will become longer.",
        "Planetary days will become shorter.",
        "Planetary gravity will become stronger.",
    ]
    assert target == 2  # answerKey "C"
    # The mirror has no train split: few-shot examples come from validation, recorded as such.
    assert task.config.test_split == "test" and task.config.fewshot_split == "validation"
    assert task.config.num_fewshot == 25 and task.config.dataset_path == "json"


def test_hellaswag_excludes_the_item_from_its_own_shots(mirror, load):
    task = load("hellaswag", 10, mirror)["hellaswag"]
    doc = task.eval_docs[0]
    text, choices, target = render(task, doc)
    # ctx_b is empty in the mirror, so the query is activity_label + ": " + ctx_a.
    assert text == (
        "Canoeing: Two women in a child are shown in a canoe while a man pulls the canoe while standing "
        "in the water, with other individuals visible in the background. the child and a different man"
    )
    assert choices[2] == "sit in a canoe while the man paddles." and len(choices) == 4
    assert target == 2
    assert task.config.test_split == task.config.fewshot_split == "validation"
    shots = task.sampler.sample(n=10, eval_doc=doc)
    assert len(shots) == 10 and doc not in shots


def test_mmlu_one_task_per_subject_with_first_dev_shots(mirror, load):
    tasks = load("mmlu", 5, mirror, ["anatomy", "astronomy"])
    assert sorted(tasks) == ["mmlu_anatomy", "mmlu_astronomy"]
    task = tasks["mmlu_anatomy"]
    doc = task.eval_docs[0]
    text, choices, target = render(task, doc)
    assert text == (
        "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral\n"
        "A. paralysis of the facial muscles.\nB. paralysis of the facial muscles and loss of taste.\n"
        "C. paralysis of the facial muscles, loss of taste and lacrimation.\n"
        "D. paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.\nAnswer:"
    )
    assert choices == ["A", "B", "C", "D"] and target == 0
    assert all(d["subject"] == "anatomy" for d in task.eval_docs)
    context = task.fewshot_context(doc, num_fewshot=5)
    assert context.startswith(
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "What is the embryological origin of the hyoid bone?\nA. The first pharyngeal arch\n"
    )
    assert context.count("\nAnswer:") == 6  # five dev shots + the question
    with pytest.raises(ValueError, match="unknown subject"):
        eval_tasks.task_configs("mmlu", 5, mirror, ["anatomyy"])


def test_truthfulqa_mc2(mirror, load):
    task = load("truthfulqa_mc2", 0, mirror)["truthfulqa_mc2"]
    doc = task.eval_docs[0]
    text, choices, target = render(task, doc)
    assert text.startswith("Q: What is human life expectancy in the United States?\nA: Human life expectancy")
    assert text.endswith(
        "A: The 1992 Olympics were held in Barcelona, Spain.\n\nQ: What happens if you eat a pomegranate?\nA:"
    )
    assert choices[0] == "Nothing in particular happens when you eat a pomegranate." and len(choices) == 6
    assert target == 0
    # MC2: normalised probability mass on the 3 true answers (here 3 equal likelihoods of 6 -> 0.5).
    assert task.process_results(doc, [(0.0, False)] * 6)["acc"] == pytest.approx(0.5)
    assert eval_tasks.TASKS["truthfulqa_mc2"].chance(doc) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no split to draw few-shot"):
        eval_tasks.task_configs("truthfulqa_mc2", 2, mirror)


def test_winogrande_partial_evaluation(mirror, load):
    task = load("winogrande", 5, mirror)["winogrande"]
    doc = task.eval_docs[0]
    text, choices, target = render(task, doc)
    assert choices == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert text == 1 and target == "always got the easier cases."  # answer "2"
    assert task.config.fewshot_split == "train"


def test_gsm8k_prompt_target_and_filters(mirror, load):
    task = load("gsm8k", 5, mirror)["gsm8k"]
    doc = task.eval_docs[0]
    text, _, target = render(task, doc)
    assert text.startswith("Question: Janet’s ducks lay 16 eggs per day.") and text.endswith(
        "farmers' market?\nAnswer:"
    )
    assert target.endswith("#### 18")
    assert task.config.fewshot_split == "train" and task.config.output_type == "generate_until"
    assert [f["name"] for f in task.config.filter_list] == ["strict-match", "flexible-extract"]
    assert eval_tasks.TASKS["gsm8k"].chance(doc) == 0.0


def test_hub_configs_without_mirror():
    (arc,) = eval_tasks.task_configs("arc_challenge", 25, None)
    assert arc["dataset_path"] == "allenai/ai2_arc" and arc["dataset_name"] == "ARC-Challenge"
    assert arc["fewshot_split"] == "train"  # the standard split when the hub is used
    (hs,) = eval_tasks.task_configs("hellaswag", 10, None)
    assert hs["dataset_path"] == "Rowan/hellaswag" and hs["dataset_name"] is None
    assert len(eval_tasks.task_configs("mmlu", 5, None)) == 57


def test_a_generation_cap_reaches_lm_eval_and_keeps_its_stop_words(mirror):
    (config,) = eval_tasks.task_configs("gsm8k", 0, mirror, max_new_tokens=48)
    kwargs = eval_tasks.build([config])["gsm8k"].config.generation_kwargs
    assert kwargs["max_gen_toks"] == 48 and kwargs["until"] == ["Question:", "</s>", "<|im_end|>"]
    assert kwargs["do_sample"] is False  # the rest of lm-eval's generation settings stay


def test_missing_mirror_split_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the mirror has no .*openai/gsm8k/main/(test|train)\.jsonl"):
        eval_tasks.task_configs("gsm8k", 5, tmp_path)


def test_a_plain_text_task_missing_from_the_mirror_names_the_file_and_the_key(tmp_path):
    from sdd.errors import MissingInput
    from sdd.eval.measures import task_docs

    with pytest.raises(
        MissingInput, match=r"evaluate.measures.plain_tasks \(winogrande\): the mirror has no .*winogrande"
    ):
        task_docs("winogrande", tmp_path)
