"""soft_overlong: DAPO Eq. 13, hand-computed for Lmax=100, Lcache=20."""

import pytest

from rlattn.rewards import get_reward_fn


@pytest.mark.parametrize(
    "length,expected",
    [(0, 0.0), (50, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (99, -0.95), (100, -1.0), (101, -1.0), (500, -1.0)],
)
def test_penalty(length, expected):
    fn = get_reward_fn("soft_overlong", max_completion_len=100, soft_punish_cache=20)
    assert fn(["text"], completion_ids=[[7] * length]) == [pytest.approx(expected)]


def test_batch_and_name():
    fn = get_reward_fn("soft_overlong", max_completion_len=10, soft_punish_cache=4)
    assert fn.__name__ == "soft_overlong"
    # 6 -> 0; 8 -> (6 - 8) / 4 = -0.5; 10 -> -1; 11 -> -1
    assert fn(["a"] * 4, completion_ids=[[1] * 6, [1] * 8, [1] * 10, [1] * 11]) == [0.0, -0.5, -1.0, -1.0]


def test_zero_cache_is_a_hard_cut():
    fn = get_reward_fn("soft_overlong", max_completion_len=10, soft_punish_cache=0)
    assert fn(["a"] * 2, completion_ids=[[1] * 10, [1] * 11]) == [0.0, -1.0]


def test_without_completion_ids_is_a_counted_failure():
    fn = get_reward_fn("soft_overlong", max_completion_len=10, soft_punish_cache=2)
    assert fn(["a", "b"]) == [None, None]
    assert fn.stats.failed == 2


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"max_completion_len": 0, "soft_punish_cache": 0}, "max_completion_len"),
        ({"max_completion_len": 10, "soft_punish_cache": 11}, "soft_punish_cache"),
        ({"max_completion_len": 10, "soft_punish_cache": -1}, "soft_punish_cache"),
        ({"max_completion_len": 10.5, "soft_punish_cache": 1}, "max_completion_len"),
        ({"max_completion_len": 10}, "soft_punish_cache"),  # missing
    ],
)
def test_bad_options_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        get_reward_fn("soft_overlong", **kwargs)
