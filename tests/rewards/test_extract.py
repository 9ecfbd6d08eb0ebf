"""extract.last_number: the last plain number in a text (what the lenient accuracy reward grades)."""

import time

import pytest

from rlattn.rewards.extract import last_number


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 3 + 4 = 7.", "7"),  # a trailing period is not a decimal point
        ("The answer is 7. \\boxed{}", "7"),
        ("I think 7, no wait, it is 8", "8"),
        ("It costs 1,234 dollars", "1234"),  # commas between digit groups removed
        ("1,000,000.", "1000000"),
        ("x = -2.5", "-2.5"),
        ("(-3)", "-3"),
        ("5-3", "3"),  # a minus after a digit or a word is not a sign
        ("a-3", "3"),
        ("3/4 of the cake", "3/4"),
        ("1,000/2,000", "1000/2000"),
        ("$18 and 50%", "50"),
        ("f(1,2)", "2"),  # a comma not followed by three digits separates numbers
        ("1, 2, 3", "3"),
        ("\\frac{1}{2}", "2"),  # LaTeX is not parsed
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize(
    "text",
    ["9" * 100_000, "(" * 100_000, "1," * 50_000, "1." * 50_000, "1/" * 50_000, "-" * 100_000, "(" * 100_000 + " and " + "9" * 100_000],
    ids=["digits", "parens", "commas", "dots", "slashes", "minus", "mixed"],
)
def test_linear_on_100k_character_inputs(text):
    start = time.perf_counter()
    last_number(text)
    assert time.perf_counter() - start < 2.0  # milliseconds in practice; a quadratic scan takes minutes
