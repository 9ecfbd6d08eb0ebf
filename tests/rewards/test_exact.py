"""exact: the boxed answer, else the first word (punctuation stripped), equals ``solution``."""

import pickle

import pytest

from rlattn.rewards import REWARD_REGISTRY, get_exact_reward, get_reward_fn
from rlattn.rewards.exact import extract_short_answer


@pytest.mark.parametrize(
    "completion,solution,expected",
    [
        ("tr", "tr", 1.0),
        ("tr.", "tr", 1.0),
        ("  tr  ", "tr", 1.0),
        ("TR", "tr", 1.0),  # case-insensitive by default
        ("tr", "TR", 1.0),
        ("**tr**", "tr", 1.0),
        ('"(tr)";', "tr", 1.0),
        ("tr is my answer", "tr", 1.0),
        ("tl", "tr", 0.0),
        ("t r", "tr", 0.0),  # first word is "t"
        ("The answer is tr", "tr", 0.0),  # first word is "The"
        ("trr", "tr", 0.0),
        (r"\boxed{bl}", "bl", 1.0),
        (r"I think tl. \boxed{bl}", "bl", 1.0),  # the box wins over the first word
        (r"\boxed{tl} then \boxed{ br }", "br", 1.0),  # the last box
        (r"\boxed{tl} then \boxed{}", "tl", 1.0),  # an empty box is skipped
        (r"\boxed{tl}", "bl", 0.0),
        ("7", "7", 1.0),
        ("7", 7, 1.0),  # solution compared as a string
        ("", "tr", 0.0),
        ("...", "tr", 0.0),
    ],
)
def test_exact(completion, solution, expected):
    fn = get_reward_fn("exact")
    assert fn([completion], solution=[solution]) == [expected]
    assert fn([[{"role": "assistant", "content": completion}]], solution=[solution]) == [expected]


def test_case_sensitive():
    fn = get_reward_fn("exact", case_sensitive=True)
    assert fn(["TR", "tr", r"\boxed{Tr}"], solution=["tr", "tr", "Tr"]) == [0.0, 1.0, 1.0]
    assert get_reward_fn("exact")(["TR"], solution=["tr"]) == [1.0]


def test_conversational_completion_uses_last_assistant_message():
    completion = [
        {"role": "assistant", "content": "bl"},
        {"role": "user", "content": "sure?"},
        {"role": "assistant", "content": [{"type": "text", "text": "br!"}]},
    ]
    assert get_exact_reward()([completion], solution=["br"]) == [1.0]
    assert get_exact_reward()([completion], solution=["bl"]) == [0.0]


def test_missing_solution():
    fn = get_exact_reward()
    assert fn(["tr", "tr", "tr"], solution=[None, "", "tr"]) == [None, None, 1.0]
    with pytest.raises(ValueError, match="'solution'"):
        fn(["tr"])
    with pytest.raises(ValueError, match="2 completions but 1 solutions"):
        fn(["tr", "tl"], solution=["tr"])
    # Through the registry the missing column becomes None for the batch, counted as a failure.
    wrapped = get_reward_fn("exact")
    assert wrapped(["tr", "tl"]) == [None, None]
    assert wrapped.stats.failed == 2


def test_extract_short_answer():
    assert extract_short_answer("  br, because the square is low and right") == "br"
    assert extract_short_answer(r"so \boxed{ (tl). }") == "tl"
    assert extract_short_answer("\n\n") == ""


def test_name_registry_and_options():
    assert "exact" in REWARD_REGISTRY
    assert get_exact_reward().__name__ == "exact"
    assert get_reward_fn("exact").__name__ == "exact"
    assert get_reward_fn("exact", case_sensitive=True).__name__ == "exact"
    assert pickle.loads(pickle.dumps(get_exact_reward(True))).case_sensitive is True
    with pytest.raises(ValueError, match="'case'.*case_sensitive"):
        get_reward_fn("exact", case=True)
    with pytest.raises(ValueError, match="case_sensitive must be true or false"):
        get_reward_fn("exact", case_sensitive="yes")


def test_choice_reward_scores_the_format():
    from rlattn.rewards.exact import get_choice_reward

    fn = get_reward_fn("choice")
    choices = [["tl", "tr", "bl", "br"]] * 4
    assert fn(["tr", "bl.", "l", "TL"], choices=choices) == [1.0, 1.0, 0.0, 1.0]
    assert get_choice_reward(case_sensitive=True)(["TL"], choices=choices[:1]) == [0.0]
    assert fn.__name__ == "choice" and "choice" in REWARD_REGISTRY
    raw = get_choice_reward()
    with pytest.raises(ValueError, match="'choices'"):
        raw(["tl"])
    assert raw(["tl"], choices=[[]]) == [None]  # no valid answers listed: cannot verify
