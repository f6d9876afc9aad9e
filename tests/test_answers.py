"""Final-answer extraction, normalisation and the conditional selection of rewrites."""

from fractions import Fraction

import pytest

from sdd.config.distill import DEFAULT_LEAK_PHRASES
from sdd.data.answers import (
    InexactAnswer,
    answer_value,
    answers_match,
    apply_selection,
    exact_number,
    extract_answer,
    gsm8k_answer,
    leaked_phrase,
    normalize_answer,
    numeric_answer,
    select,
)
from sdd.generate.engines import Generation

EXTRACT = [
    # GSM8k format
    ("She pays 3*4=12 dollars.\n#### 12", "12"),
    ("Total is 1,000 + 250 = 1,250 apples.\n#### 1,250", "1250"),
    ("The temperature drops by 15 degrees.\n#### -15", "-15"),
    ("Each slice costs $2.50.\n#### $2.50", "2.5"),
    ("So the answer is 18.\n#### 18.0", "18"),
    ("#### 42 apples", "42"),
    ("First 5 then 7.\n#### 7\nSome trailing chatter with 99 in it", "7"),
    ("Half of the cake: 1/2\n#### 3/6", "1/2"),
    ("Percent increase.\n#### 25%", "25"),
    ("#### 0.75.", "0.75"),
    # \boxed{} (MATH / OpenMathInstruct)
    ("Thus $x = \\boxed{5}$.", "5"),
    ("The area is $\\boxed{\\frac{3}{4}}$", "3/4"),
    ("We get \\boxed{-2.0}.", "-2"),
    ("so the sum is \\boxed{1,024}", "1024"),
    ("Answer: \\boxed{\\text{(B)}}", "(b)"),
    ("\\boxed{2x+1}", "2x+1"),
    ("The result \\boxed{\\dfrac{10}{4}}", "5/2"),
    # "the answer is"
    ("Adding them gives 30. The answer is 30.", "30"),
    ("The final answer is $1,500.", "1500"),
    ("Answer: 12 cookies", "12"),
    ("The answer is: -7", "-7"),
    ("So the answer is 3.50 dollars per pound.", "3.5"),
    # last number
    ("He walked 3 miles, then 4 more, so 7 miles in total.", "7"),
    ("They split $120 evenly, each gets $40.", "40"),
    ("Between 2 and 3 there are 0.5 steps", "0.5"),
    ("In all, 2,345,678 people came", "2345678"),
    # no answer at all
    ("I am not sure how to solve this.", None),
    ("", None),
    ("#### ", None),
    # the LAST marker wins; one followed by no number (a Markdown heading) does not end the search
    ("#### 5 is wrong, #### 6", "6"),
    ("#### Step 1\nSo \\boxed{4}", "4"),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("Sum.\n#### 1,000", "1000"),
        ("It drops.\n#### -15", "-15"),
        ("#### 2.50", "2.5"),
        ("#### 3/4", "3/4"),
        ("#### -6/8", "-3/4"),
        ("#### $1,234.00 dollars", "1234"),
        ("Earlier #### 5.\nLater #### 7", "7"),
        ("#### 7\nA trailing line with 99", "7"),
        ("#### banana", None),
        ("#### 2x+1", None),
        ("#### 1/0", None),
        ("#### ", None),
        ("No marker: 42", None),
    ],
)
def test_gsm8k_answer_is_the_number_after_the_last_marker(solution, expected):
    """One rule for the gsm8k adapter and the answer check (`extract_answer` tries it first)."""
    assert gsm8k_answer(solution) == expected
    if expected is not None:
        assert extract_answer(solution) == expected


def test_table_is_large_enough():
    assert len(EXTRACT) >= 25


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1,000", "1000"),
        ("$5", "5.00"),
        ("72.", "72"),
        ("-0.50", "-0.5"),
        ("6/4", "3/2"),
        ("\\frac{1}{2}", "1/2"),
        ("10 dollars", "10"),
        # numbers compare by exact value: a decimal and a fraction, digits past a float's 17
        ("0.50", "1/2"),
        ("1/2", "0.5 cups extra 1"),  # the leading number, with a unit and words after it
        ("-3/4", "-0.75"),
        ("9007199254740993", "9,007,199,254,740,993.000"),
    ],
)
def test_equal_answers_match(a, b):
    assert answers_match(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("12", "13"),
        ("1.5", "15"),
        ("-3", "3"),
        (None, "3"),
        ("1/2", "0.51 cups extra 1"),
        ("1/3", "0.3333333333333333"),  # equal as floats, not as values
        ("9007199254740993", "9007199254740992"),  # equal as floats (2^53 + 1), not as integers
        ("1" * 400, "1" * 399 + "2"),
    ],
)
def test_different_answers_do_not_match(a, b):
    assert not answers_match(a, b)


def test_numbers_are_normalised_exactly():
    """Never through floating point or a limited precision: 400 digits stay 400 digits."""
    long = "9" * 400
    assert normalize_answer(long) == long
    assert normalize_answer(f"{long}.50") == f"{long}.5"
    assert gsm8k_answer(f"#### {long[:-3]},999") == long
    assert extract_answer(f"So \\boxed{{{long}}}") == long
    assert normalize_answer("12345678901234567890123456789.0100") == "12345678901234567890123456789.01"
    assert normalize_answer("-0.000") == "0"
    assert normalize_answer("1.5/2") == "3/4"  # a decimal numerator (it raised ValueError)
    assert normalize_answer("٣/٦") == "1/2"  # other scripts' digits, as ASCII
    assert answer_value("0.5") == answer_value("1/2") == Fraction(1, 2)
    assert answer_value("banana") is None


def test_a_fraction_too_long_to_reduce_is_not_a_number():
    huge = "1/" + "3" * 5_000
    with pytest.raises(InexactAnswer, match="the fraction has 5001 digits; at most 4300 can be reduced exactly"):
        exact_number(huge)
    assert numeric_answer(huge) is None
    assert normalize_answer(huge) == huge  # compared as text
    assert answers_match(huge, huge) and not answers_match(huge, "0")


def test_selection_compares_long_answers_exactly():
    reference = "1234567890" * 40
    near = reference[:-1] + "1"
    row = {"id": "d" * 16, "dataset": "gsm8k", "instruction": "?", "context": "", "response": "x"}
    rows = [{**row, "answer": reference}]
    assert apply_selection(rows, [[gen(f"#### {reference}")]], True, LEAKS)[0]["reason"] == "accepted"
    assert apply_selection(rows, [[gen(f"#### {near}")]], True, LEAKS)[0]["reason"] == "wrong_answer"
    half = [{**rows[0], "answer": "0.5"}]
    assert apply_selection(half, [[gen("#### 1/2")]], True, LEAKS)[0]["reason"] == "accepted"


def test_normalize_is_idempotent():
    for raw in ["$1,234.50", "\\frac{6}{8}", "-7.0", "(A)", "25%"]:
        once = normalize_answer(raw)
        assert normalize_answer(once) == once


def gen(text, finish="stop"):
    return Generation(text=text, finish_reason=finish, prompt_tokens=10, generated_tokens=len(text.split()) + 1)


LEAKS = DEFAULT_LEAK_PHRASES


@pytest.mark.parametrize(
    ("cands", "answer", "selected", "reason"),
    [
        ([gen("3+4=7\n#### 7")], "7", "distilled", "accepted"),
        ([gen("3+4=8\n#### 8")], "7", "original", "wrong_answer"),
        ([gen("I cannot tell.")], "7", "original", "no_answer"),
        ([gen("3+4=7 and then 7*2", "length")], "7", "original", "truncated"),
        ([gen("   \n")], "7", "original", "empty"),
        ([gen("As the reference answer says, #### 7")], "7", "original", "leak"),
        ([gen("Following Your Response guidance: a poem.")], None, "original", "leak"),
        ([gen("A short poem about waves.")], None, "distilled", "accepted"),
        ([gen("#### 9"), gen("#### 7")], "7", "distilled", "accepted"),
        ([], "7", "original", "prompt_too_long"),
    ],
)
def test_select(cands, answer, selected, reason):
    choice = select(cands, answer, LEAKS)
    assert (choice.selected, choice.reason) == (selected, reason)


def test_select_keeps_first_acceptable_candidate():
    assert select([gen("#### 9"), gen("#### 7"), gen("so #### 7.0")], "7", LEAKS).candidate == 1


def test_too_short_rewrite_keeps_the_original():
    choice = select([gen("#### 72")], "72", LEAKS, min_chars=20)
    assert (choice.selected, choice.reason) == ("original", "too_short")
    rows = [
        {
            "id": "c" * 16,
            "dataset": "gsm8k",
            "instruction": "48+24?",
            "context": "",
            "response": "In May 48/2 = 24, in total 48+24 = 72.\n#### 72",
            "answer": "72",
        }
    ]
    assert apply_selection(rows, [[gen("#### 72")]], True, LEAKS, min_length_ratio=0.3)[0]["reason"] == "too_short"
    assert apply_selection(rows, [[gen("#### 72")]], True, LEAKS, min_length_ratio=0.0)[0]["reason"] == "accepted"


def test_leak_is_case_insensitive_and_configurable():
    assert leaked_phrase("Based on THE REFERENCE, ...", LEAKS) == "the reference"
    assert leaked_phrase("Based on the reference, ...", ["nothing"]) is None


def test_apply_selection_builds_distilled_rows():
    rows = [
        {
            "id": "a" * 16,
            "dataset": "gsm8k",
            "instruction": "3+4?",
            "context": "",
            "response": "3+4=7\n#### 7",
            "answer": "7",
        },
        {
            "id": "b" * 16,
            "dataset": "gsm8k",
            "instruction": "2+2?",
            "context": "",
            "response": "2+2=4\n#### 4",
            "answer": "4",
        },
    ]
    out = apply_selection(rows, [[gen("Adding: 7.\n#### 7")], [gen("#### 5")]], True, LEAKS)
    assert out[0]["response"] == "Adding: 7.\n#### 7" and out[0]["selected"] == "distilled"
    assert out[1]["response"] == rows[1]["response"] and out[1]["reason"] == "wrong_answer"
    assert out[1]["response_distilled"] == "#### 5" and out[1]["response_original"] == rows[1]["response"]
    # general data: no answer check, so a different number is fine
    general = apply_selection(rows[1:], [[gen("#### 5")]], False, LEAKS)
    assert general[0]["selected"] == "distilled"


def test_a_rewrite_ends_at_its_first_answer_line():
    from sdd.data.answers import end_at_answer_line

    loop = "She pays 3 x 6 = $18.\n#### 18\n\nThe shop earns $18.\n#### 18\n\nThe shop earns"
    assert end_at_answer_line(loop) == "She pays 3 x 6 = $18.\n#### 18"
    assert end_at_answer_line("#### Step 1\nAdd 2 and 2.\n#### 4\nagain") == "#### Step 1\nAdd 2 and 2.\n#### 4"
    assert end_at_answer_line("2 + 2 = 4\n#### 4\n") is None  # nothing after it: unchanged
    assert end_at_answer_line("no marker here") is None


def test_selection_judges_a_looping_rewrite_without_its_loop():
    from sdd.data.answers import apply_selection
    from sdd.generate.engines import Generation

    row = {"id": "r1", "instruction": "q", "context": "", "response": "3 x 6 = 18\n#### 18", "answer": "18"}
    looping = Generation("The shop earns 3 x 6 = 18 dollars.\n#### 18\n\n#### 18\n\n#### 1", "length", 10, 40)
    kept = apply_selection([row], [[looping]], True, [], 0.3, end_at_answer=True)[0]
    assert (kept["selected"], kept["reason"], kept["finish_reason"]) == ("distilled", "accepted", "answer_line")
    assert kept["response"] == "The shop earns 3 x 6 = 18 dollars.\n#### 18"
    old = apply_selection([row], [[looping]], True, [], 0.3, end_at_answer=False)[0]
    assert (old["selected"], old["reason"]) == ("original", "truncated")
    general = apply_selection([row], [[looping]], False, [], 0.3, end_at_answer=True)[0]
    assert general["reason"] == "truncated"  # only answer-checked (math) datasets are cut
