"""Every reward call has a time bound, and a reward that fails on every sample stops the run
(issue #21, items 4 and 5; rewards/registry.py ``SafeReward.bound``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from rlattn.config import ScriptArguments
from rlattn.rewards.registry import RewardFailedError, SafeReward, bound_rewards, get_reward_fn, safe_reward

LOGGER = "rlattn.rewards.registry"


def _sleepy(completions, **kwargs):
    time.sleep(5)
    return [1.0] * len(completions)


def test_a_slow_reward_returns_none_at_its_bound_with_one_warning(caplog):
    fn = safe_reward(_sleepy).bound(call_timeout_s=0.2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        t0 = time.perf_counter()
        assert fn(["a", "b"]) == [None, None]
        assert fn(["c"]) == [None]
        elapsed = time.perf_counter() - t0
    assert elapsed < 3.0  # two bounded calls, not two 5 s sleeps
    assert (fn.stats.timeouts, fn.stats.failed, fn.stats.none, fn.stats.samples) == (2, 3, 3, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'_sleepy'" in warnings[0] and "reward_call_timeout_s=0.2" in warnings[0]


def test_a_hanging_reward_is_abandoned_and_counted_and_threads_do_not_pile_up():
    release = threading.Event()

    def hangs(completions, **kwargs):
        release.wait()
        return [0.0] * len(completions)

    fn = safe_reward(hangs).bound(call_timeout_s=0.05)
    try:
        for _ in range(SafeReward.MAX_ABANDONED + 3):
            assert fn(["x"]) == [None]
        assert fn.stats.timeouts == SafeReward.MAX_ABANDONED  # then it is not started again
        assert fn.abandoned_running == SafeReward.MAX_ABANDONED
        assert fn.stats.failed == SafeReward.MAX_ABANDONED + 3
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while fn.abandoned_running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fn.abandoned_running == 0
    assert fn(["y"]) == [0.0]  # back to normal once the hung calls have returned


def test_a_bounded_reward_still_gets_its_keywords_and_logs_metrics():
    logged = []

    def uses_kwargs(completions, solution, log_metric=None, **kwargs):
        assert threading.current_thread() is not threading.main_thread()
        return [float(c == s) for c, s in zip(completions, solution)]

    fn = safe_reward(uses_kwargs).bound(call_timeout_s=10)
    assert fn(["1", "2"], solution=["1", "3"], log_metric=lambda k, v: logged.append((k, v))) == [1.0, 0.0]
    assert ("rewards/uses_kwargs/failed_frac", 0.0) in logged


def test_async_reward_is_bounded_too():
    async def slow(completions, **kwargs):
        await asyncio.sleep(5)
        return [1.0] * len(completions)

    fn = safe_reward(slow).bound(call_timeout_s=0.1)
    assert asyncio.run(fn(["a"])) == [None]
    assert fn.stats.timeouts == 1


def test_unbounded_reward_runs_in_the_callers_thread():
    seen = []
    fn = safe_reward(lambda completions, **kw: seen.append(threading.current_thread()) or [1.0])
    assert fn(["a"]) == [1.0] and seen == [threading.current_thread()]


def test_a_reward_failing_on_every_sample_stops_after_n_calls_naming_it_and_the_first_error():
    calls = []

    def broken(completions, **kwargs):
        calls.append(1)
        raise RuntimeError(f"boom {len(calls)}")

    fn = safe_reward(broken).bound(max_failed_steps=3)
    assert fn(["a"]) == [None] and fn(["b"]) == [None]
    with pytest.raises(RewardFailedError) as info:
        fn(["c"])
    message = str(info.value)
    assert "'broken'" in message and "3 consecutive calls" in message and "every sample" in message
    assert "RuntimeError: boom 1" in message  # the first failure, not the last
    assert "reward_max_failed_steps: 0" in message


def test_wrong_length_counts_and_a_good_call_resets_the_streak():
    results = iter([[1.0], [1.0, 2.0], [1.0], [1.0]])
    fn = safe_reward(lambda completions, **kw: next(results)).bound(max_failed_steps=2)
    assert fn(["a", "b"]) == [None, None]  # 1 value for 2 completions: a failure
    assert fn(["a", "b"]) == [1.0, 2.0]  # fine: the streak restarts
    assert fn(["a", "b"]) == [None, None]
    with pytest.raises(RewardFailedError, match="returned 1 values for 2 completions"):
        fn(["a", "b"])


def test_failed_share_threshold_and_keep_going():
    half = safe_reward(lambda completions, **kw: [1.0, float("nan")]).bound(max_failed_steps=2, max_failed_frac=0.5)
    half(["a", "b"])
    with pytest.raises(RewardFailedError, match="at least 50% of its samples"):
        half(["a", "b"])
    keep = safe_reward(lambda completions, **kw: 1 / 0).bound(max_failed_steps=0)
    for _ in range(10):
        assert keep(["a"]) == [None]
    assert keep.stats.failed == 10


def test_bound_rewards_applies_to_wrapped_rewards_only():
    wrapped = get_reward_fn("format")
    other = object()
    assert bound_rewards([wrapped, other], call_timeout_s=7.0, max_failed_steps=2) == [wrapped]
    assert (wrapped.call_timeout_s, wrapped.max_failed_steps, wrapped.max_failed_frac) == (7.0, 2, 1.0)
    assert wrapped([r"\boxed{1}"]) == [1.0]


@pytest.mark.parametrize("kwargs, key", [(dict(call_timeout_s=-1), "reward_call_timeout_s"),
                                         (dict(max_failed_steps=-2), "reward_max_failed_steps"),
                                         (dict(max_failed_frac=0.0), "reward_max_failed_frac")])
def test_bad_bounds_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        safe_reward(_sleepy).bound(**kwargs)
    script_kwargs = {{"call_timeout_s": "reward_call_timeout_s", "max_failed_steps": "reward_max_failed_steps",
                      "max_failed_frac": "reward_max_failed_frac"}[k]: v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=key):
        ScriptArguments(**script_kwargs)


def test_script_defaults_are_generous():
    args = ScriptArguments()
    assert (args.reward_call_timeout_s, args.reward_max_failed_steps, args.reward_max_failed_frac) == (300.0, 3, 1.0)
    assert args.overwrite_output_dir is False
