"""countdown: the equation uses each number once, only + - * / and parentheses, equals the target."""

import pytest

from rlattn.rewards import get_reward_fn
from rlattn.rewards.countdown import extract_equation

NUMS, TARGET = [3, 5, 2], 16  # (3 + 5) * 2


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("<answer>(3 + 5) * 2</answer>", 1.0),
        (r"<answer>\boxed{(3 + 5) * 2}</answer>", 1.0),
        (r"<answer>$(3+5) \times 2$</answer>", 1.0),
        ("<answer>(3 + 5) * 2 = 16</answer>", 1.0),
        (r"Thinking... \boxed{2 * (5 + 3)}", 1.0),
        ("Let me try:\n3 * 5 + 2\n(5 + 3) * 2\n", 1.0),  # last expression line
        ("<answer>(3 + 5) * 2 = 17</answer>", 0.0),  # wrong stated result
        ("<answer>3 + 5 + 2</answer>", 0.0),  # wrong value
        ("<answer>(3 + 5) * 2 * 1</answer>", 0.0),  # a number not given
        ("<answer>(3 + 3) * 2</answer>", 0.0),  # 3 used twice, 5 unused
        ("<answer>(3 + 5) * 2 + 0 * 2</answer>", 0.0),  # extra numbers
        ("<answer>(3 + 5) ** 2 / 4</answer>", 0.0),  # ** not allowed
        ("<answer>-(3 - 5) * 8</answer>", 0.0),  # unary minus not allowed
        ("<answer>__import__('os').system('true')</answer>", 0.0),  # never evaluated
        ("<answer>(3 + 5) * 2.0</answer>", 0.0),  # floats are not the given numbers
        ("<answer>(3 + 5) / (2 - 2)</answer>", 0.0),  # division by zero
        ("<answer>" + "(" * 150 + "3+5" + ")" * 150 + "*2</answer>", 0.0),  # over the size bound
        ("I give up.", 0.0),
        ("", 0.0),
    ],
)
def test_countdown(completion, expected):
    fn = get_reward_fn("countdown")
    assert fn([completion], nums=[NUMS], target=[TARGET]) == [expected]
    assert fn([[{"role": "assistant", "content": completion}]], nums=[NUMS], target=[TARGET]) == [expected]


def test_division_exact():
    # 6 / (1 - 3/4) = 24 needs exact rational arithmetic.
    fn = get_reward_fn("countdown")
    assert fn(["<answer>6 / (1 - 3 / 4)</answer>"], nums=[[6, 1, 3, 4]], target=[24]) == [1.0]


def test_multiset_with_repeats():
    fn = get_reward_fn("countdown")
    assert fn(["<answer>4 * 4 + 4</answer>"], nums=[[4, 4, 4]], target=[20]) == [1.0]
    assert fn(["<answer>4 * 4</answer>"], nums=[[4, 4, 4]], target=[16]) == [0.0]


def test_format_score_for_wrong_but_well_placed_equations():
    fn = get_reward_fn("countdown", format_score=0.1)
    completions = [
        "<answer>3 + 5 + 2</answer>",  # in the requested form, wrong: 0.1
        r"\boxed{3 + 5 + 2}",  # in a box, wrong: 0.1
        "3 + 5 + 2",  # a bare line, wrong: 0
        "no equation",  # nothing: 0
        "<answer>(3 + 5) * 2</answer>",  # right: 1
    ]
    assert fn(completions, nums=[NUMS] * 5, target=[TARGET] * 5) == [0.1, 0.1, 0.0, 0.0, 1.0]


def test_batch_rows_and_missing_row():
    fn = get_reward_fn("countdown")
    out = fn(
        ["<answer>(3 + 5) * 2</answer>", "<answer>10 - 1</answer>", "<answer>1</answer>"],
        nums=[NUMS, [10, 1], None],
        target=[TARGET, 9, 1],
    )
    assert out == [1.0, 1.0, None]


def test_missing_columns_is_a_counted_failure():
    fn = get_reward_fn("countdown")
    assert fn(["<answer>1</answer>"]) == [None]
    assert fn.stats.failed == 1


def test_extraction_order():
    assert extract_equation(r"<answer>1+2</answer> \boxed{3+4}") == ("1+2", True)
    assert extract_equation(r"\boxed{3+4}") == ("3+4", True)
    assert extract_equation("try\n1 + 2\nso that is it") == ("1 + 2", False)
    assert extract_equation("the year 2024\n") == (None, False)


@pytest.mark.parametrize("value", [-0.1, 1.0, "0.1", True])
def test_bad_format_score(value):
    with pytest.raises(ValueError, match="format_score"):
        get_reward_fn("countdown", format_score=value)


def test_pathological(bounded):
    fn = get_reward_fn("countdown")
    huge = "<answer>" + "9" * 100_000 + "+1</answer>"
    deep = "<answer>" + "(" * 100_000 + "1" + ")" * 100_000 + "</answer>"
    assert bounded(lambda: fn([huge, deep], nums=[[1, 2]] * 2, target=[3] * 2)) == [0.0, 0.0]
