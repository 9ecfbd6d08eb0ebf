"""format: 1.0 for a non-empty \\boxed{} (after </think> with think=True), else 0.0."""

import pytest

from rlattn.rewards import find_boxed, get_reward_fn, last_boxed


@pytest.mark.parametrize(
    "completion,expected",
    [
        (r"The answer is \boxed{7}.", 1.0),
        (r"\boxed{}", 0.0),  # the tiny model's empty box
        (r"\boxed{  }", 0.0),
        (r"\boxed{} then \boxed{x}", 1.0),
        (r"\boxed{7", 0.0),  # never closed
        ("The answer is 7.", 0.0),
        ("", 0.0),
        (r"\fbox{7}", 1.0),
        (r"\boxed {7}", 1.0),
        (r"\boxed 7", 1.0),
        (r"\boxedx{7}", 0.0),  # not the \boxed command
    ],
)
def test_format(completion, expected):
    fn = get_reward_fn("format")
    assert fn([completion]) == [expected]
    assert fn([[{"role": "assistant", "content": completion}]]) == [expected]


@pytest.mark.parametrize(
    "completion,expected",
    [
        (r"<think>2+5=7</think> The answer is \boxed{7}.", 1.0),
        (r"2+5=7</think>\boxed{7}", 1.0),  # the prompt ended with <think>
        (r"<think>2+5=7</think> The answer is \boxed{}.", 0.0),
        (r"<think>\boxed{7}</think> so", 0.0),  # the box must come after the reasoning
        (r"<think> </think>\boxed{7}", 0.0),  # empty reasoning
        (r"\boxed{7}", 0.0),  # no reasoning block
        (r"<think>a</think><think>b</think>\boxed{7}", 0.0),  # two blocks
        (r"</think>x<think>\boxed{7}", 0.0),  # tags out of order
    ],
)
def test_format_think(completion, expected):
    assert get_reward_fn("format", think=True)([completion]) == [expected]


def test_name_and_options():
    assert get_reward_fn("format").__name__ == "format"
    with pytest.raises(ValueError, match="think"):
        get_reward_fn("format", think="yes")


def test_box_extraction_details():
    assert last_boxed(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"  # escaped braces do not close the box
    assert last_boxed(r"\boxed{a{b{c}}d}") == "a{b{c}}d"
    assert last_boxed(r"\boxed{\boxed{3}}") == "3"
    assert last_boxed(r"\boxed{1} \boxed{2} \boxed{}") == "2"
    assert last_boxed(r"\boxed{x \boxed{y} z}") == r"x \boxed{y} z"  # the outer box closes last
    assert last_boxed(r"\boxed{2} and \boxed{3") == "2"  # an unclosed box is ignored
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{2} \boxed{ \boxed{} }") == "2"  # a box around an empty box is empty
    assert last_boxed(r"\boxed{ \fbox{ \boxed{x} } }") == "x"
    assert last_boxed(r"\boxed{\boxed{1}+\boxed{2}}") == r"\boxed{1}+\boxed{2}"
    assert [c for _, _, c in find_boxed(r"\boxed{x \boxed{y}}")] == ["y", r"x \boxed{y}"]


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"\boxed{" * 100_000 + "1", 0.0),  # never closed
        (r"\boxed{" * 100_000 + "1" + "}" * 100_000, 1.0),  # boxes nested 100k deep
        ("{" * 100_000 + r"\boxed{1}", 1.0),
    ],
    ids=["unclosed", "nested-boxes", "open-braces"],
)
def test_pathological_text_is_linear(bounded, text, expected):
    assert bounded(lambda: get_reward_fn("format")([text])) == [expected]
