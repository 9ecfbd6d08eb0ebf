"""accuracy: math-verify equivalence of the last non-empty \\boxed{} with the gold answer."""

import pickle

import pytest

from rlattn.rewards import get_accuracy_reward, get_reward_fn
from rlattn.rewards.accuracy import wrap_gold


@pytest.fixture(scope="module")
def strict(grader):
    return get_reward_fn("accuracy", grader=grader)


@pytest.fixture(scope="module")
def lenient(grader):
    return get_reward_fn("accuracy", fallback_last_number=True, grader=grader)


# (gold as a dataset stores it, completion, expected score)
EQUIVALENCES = [
    (r"\frac{1}{2}", r"So the answer is \boxed{0.5}.", 1.0),
    ("0.5", r"\boxed{\frac{1}{2}}", 1.0),
    (r"\frac{1}{2}", r"\boxed{\dfrac{1}{2}}", 1.0),
    (r"\frac{1}{2}", r"\boxed{\dfrac12}", 1.0),
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\sqrt{2}/2}", 1.0),
    ("3", r"\boxed{x=3}", 1.0),
    ("x=3", r"\boxed{3}", 1.0),
    ("5", r"The side is \boxed{5\text{ cm}}", 1.0),
    ("1000", r"\boxed{1{,}000}", 1.0),
    ("1024", r"\boxed{2^{10}}", 1.0),
    (r"[1,2)", r"\boxed{[1,2)}", 1.0),
    (r"[1,2)", r"\boxed{(1,2)}", 0.0),  # open vs half-open interval
    (r"(-\infty, 3]", r"\boxed{(-\infty,3]}", 1.0),
    (r"\{1,2\}", r"\boxed{\{2,1\}}", 1.0),  # sets are unordered
    ("(1,2)", r"\boxed{(2,1)}", 0.0),  # a point is ordered
    ("7", r"\boxed{8}", 0.0),
    ("7", r"\boxed{-7}", 0.0),
    ("12", r"first \boxed{12} then, on reflection, \boxed{13}", 0.0),  # the last box counts
    ("13", r"first \boxed{12} then, on reflection, \boxed{13}", 1.0),
    ("13", r"\boxed{13} and an empty one at the end \boxed{}", 1.0),  # last NON-empty box
    (r"\frac{1}{2}", r"\boxed {\frac{1}{2}}", 1.0),  # space before the brace
    ("6", r"\fbox{6}", 1.0),
    (r"\frac{1}{2}", r"\boxed{\boxed{\frac{1}{2}}}", 1.0),  # nested box unwrapped
    (r"\frac{3}{4}", r"\boxed{\frac{{3}}{{4}}}", 1.0),  # nested braces inside the box
    (r"\$5", r"\boxed{5}", 1.0),  # an escaped dollar is not a math delimiter
]


@pytest.mark.parametrize("gold,completion,expected", EQUIVALENCES)
def test_equivalences(strict, gold, completion, expected):
    assert strict([completion], solution=[gold]) == [expected]


def test_batch_matches_single_calls(strict):
    golds = [g for g, _, _ in EQUIVALENCES]
    completions = [c for _, c, _ in EQUIVALENCES]
    assert strict(completions, solution=golds) == [e for _, _, e in EQUIVALENCES]


def test_no_box_or_empty_box_scores_zero_when_strict(strict):
    completions = ["The answer is 7.", r"The answer is 7. \boxed{}", r"\boxed{   }", "", r"\boxed{7"]
    assert strict(completions, solution=["7"] * 5) == [0.0] * 5


def test_lenient_falls_back_to_the_last_number(lenient):
    completions = [
        "The answer is 7.",
        r"The answer is 7. \boxed{}",  # the tiny model's empty box
        "I think 7, no wait, it is 8",
        r"\boxed{8} although 7",  # a non-empty box wins over the last number
        "",
    ]
    assert lenient(completions, solution=["7"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_lenient_grades_exactly_the_boxed_last_number(grader):
    reward = get_accuracy_reward(fallback_last_number=True, grader=grader)
    assert reward.answer("It costs 1,234 dollars.") == ("1234", False)
    assert reward.prediction("It costs 1,234 dollars.") == r"\boxed{1234}"  # what goes to math-verify
    assert reward.answer(r"\boxed{12} or 13") == ("12", True)  # a box wins
    assert reward.answer("no number") == (None, False)
    assert get_accuracy_reward(grader=grader).answer("so it is 42") == (None, False)  # strict: no fallback
    assert reward(["It costs 1,234 dollars.", "x = -3", "3/4 of it"], solution=["1234", "-3", "0.75"]) == [1.0, 1.0, 1.0]


def test_lenient_on_a_long_completion_reads_its_end(lenient):
    text = "step " * 2000 + "so the result is 42"
    assert lenient([text], solution=["42"]) == [1.0]


def test_message_list_completions(strict):
    # TRL passes conversational completions as lists of messages; the last assistant message counts.
    completions = [
        [{"role": "assistant", "content": r"It is \boxed{\frac{1}{2}}"}],
        [{"role": "assistant", "content": r"\boxed{3}"}, {"role": "user", "content": r"\boxed{0.5}"}],
        [{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{0.5}"}]}],
        [],
    ]
    assert strict(completions, solution=[r"\frac{1}{2}"] * 4) == [1.0, 0.0, 1.0, 0.0]


def test_missing_gold_is_none(strict):
    assert strict([r"\boxed{1}", r"\boxed{1}", r"\boxed{1}"], solution=[None, "", "1"]) == [None, None, 1.0]


def test_numeric_gold(strict):
    assert strict([r"\boxed{4}", r"\boxed{0.25}"], solution=[4, 0.25]) == [1.0, 1.0]


def test_no_solution_column_is_a_counted_failure(strict):
    before = strict.stats.failed
    assert strict([r"\boxed{1}"]) == [None]
    assert strict.stats.failed == before + 1


@pytest.mark.parametrize(
    "pred",
    [
        r"\boxed{" + "9" * 100_000 + "}",  # 100k-digit number
        r"\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}",  # deeply nested braces
        r"\boxed{" + "(" * 5_000 + "1" + ")" * 5_000 + "}",  # deeply nested parentheses
        r"\boxed{2^{2^{2^{2^{100}}}}}",  # power tower
        r"\boxed{10^{999999999}}",  # huge exponent
        r"\boxed{1000000!}",  # huge factorial
        "{" * 200_000,  # unclosed braces: no answer at all
    ],
    ids=["digits", "braces", "parens", "tower", "exponent", "factorial", "unclosed"],
)
def test_pathological_answers_return_zero(strict, bounded, pred):
    # Refused by the grader's pre-checks (or never an answer): 0.0, and no worker is tied up.
    assert bounded(lambda: strict([pred], solution=["7"])) == [0.0]


def test_pathological_lenient_completion_returns(lenient, bounded):
    text = "(" * 100_000 + " and the number " + "9" * 100_000
    assert bounded(lambda: lenient([text], solution=["7"])) == [0.0]


def test_grading_from_a_non_main_thread(strict, bounded):
    # math-verify's signal.alarm timeouts fail off the main thread; ours do not.
    assert bounded(lambda: strict([r"\boxed{0.5}", r"\boxed{2}"], solution=[r"\frac{1}{2}"] * 2)) == [1.0, 0.0]


def test_factory_names_and_options(grader):
    fn = get_accuracy_reward(grader=grader)
    assert fn.__name__ == "accuracy"
    assert get_reward_fn("accuracy").__name__ == "accuracy"
    with pytest.raises(ValueError, match="fallback_last_number"):
        get_reward_fn("accuracy", fallback_last_number="yes")
    with pytest.raises(ValueError, match="timeout"):
        get_reward_fn("accuracy", timeout=0)
    with pytest.raises(ValueError, match="fallback_last_numbr"):
        get_reward_fn("accuracy", fallback_last_numbr=True)


def test_picklable(strict, grader):
    # TRL's async rollout worker pickles reward functions; the grader travels as settings only.
    clone = pickle.loads(pickle.dumps(strict))
    assert clone.__name__ == "accuracy"
    try:
        assert clone([r"\boxed{0.5}"], solution=[r"\frac{1}{2}"]) == [1.0]
    finally:
        clone.fn.grader.close()


@pytest.mark.parametrize(
    "gold,wrapped",
    [
        (r"\frac{1}{2}", r"$\frac{1}{2}$"),
        (r"$\frac{1}{2}$", r"$\frac{1}{2}$"),
        (r"\boxed{3}", r"\boxed{3}"),
        (" 12 ", "$12$"),
        (7, "$7$"),
        (None, None),
        ("  ", None),
    ],
)
def test_wrap_gold(gold, wrapped):
    assert wrap_gold(gold) == wrapped
