"""Registry, get_reward_fn and the safety wrapper."""

import asyncio
import logging
import math
import pickle

import pytest

from rlattn.rewards import REWARD_REGISTRY, SafeReward, get_reward_fn, get_reward_fns, register_reward, safe_reward


def test_builtin_names():
    assert {"accuracy", "format", "soft_overlong", "countdown"} <= set(REWARD_REGISTRY)
    for name in ("accuracy", "format", "countdown"):
        assert get_reward_fn(name).__name__ == name
    assert get_reward_fn("soft_overlong", max_completion_len=8, soft_punish_cache=2).__name__ == "soft_overlong"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="accuracy") as info:
        get_reward_fn("acuracy")
    assert "countdown" in str(info.value) and "format" in str(info.value)


def test_unknown_option_names_the_key():
    with pytest.raises(ValueError, match="'thinking'.*think"):
        get_reward_fn("format", thinking=True)


def test_missing_option_names_the_key():
    with pytest.raises(ValueError, match="max_completion_len"):
        get_reward_fn("soft_overlong", soft_punish_cache=2)


def _len_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def get_scaled_reward(scale: float = 1.0):
    def scaled(completions, **kwargs):
        return [scale * len(c) for c in completions]

    return scaled


def test_dotted_path_to_function_and_factory():
    fn = get_reward_fn(f"{__name__}:_len_reward")
    assert fn.__name__ == "_len_reward"
    assert fn(["ab", "c"]) == [2.0, 1.0]
    scaled = get_reward_fn(f"{__name__}:get_scaled_reward", scale=2.0)
    assert scaled.__name__ == "scaled"
    assert scaled(["ab"]) == [4.0]
    with pytest.raises(ValueError, match="no options"):
        get_reward_fn(f"{__name__}:_len_reward", scale=2.0)


@pytest.mark.parametrize("path", ["no_such_module_xyz:f", f"{__name__}:missing", f"{__name__}:", ":f"])
def test_bad_dotted_paths(path):
    with pytest.raises(ValueError):
        get_reward_fn(path)


@pytest.fixture
def scratch_registry():
    saved = dict(REWARD_REGISTRY)
    yield REWARD_REGISTRY
    REWARD_REGISTRY.clear()
    REWARD_REGISTRY.update(saved)


def test_register_factory_and_function(scratch_registry):
    @register_reward("test_const")
    def get_const_reward(value: float = 1.0):
        def const(completions, **kwargs):
            return [value] * len(completions)

        return const

    @register_reward("test_len")
    def length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    assert get_reward_fn("test_const", value=0.5)(["a", "b"]) == [0.5, 0.5]
    assert get_reward_fn("test_len")(["abc"]) == [3.0]
    assert get_reward_fn("test_len").__name__ == "length"
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_len", length)
    with pytest.raises(ValueError, match="already registered"):
        register_reward("accuracy", length)


@pytest.mark.parametrize("name", ["", " x", "a:b", None])
def test_bad_registered_names(name):
    with pytest.raises(ValueError):
        register_reward(name)


def test_get_reward_fns():
    fns = get_reward_fns(["format", "soft_overlong"], {"soft_overlong": {"max_completion_len": 8, "soft_punish_cache": 2}})
    assert [f.__name__ for f in fns] == ["format", "soft_overlong"]
    with pytest.raises(ValueError, match="accuracy"):
        get_reward_fns(["format"], {"accuracy": {}})


# ---- safety wrapper ---------------------------------------------------------------------------
def test_raising_reward_gives_none_counts_and_warns_once(caplog):
    def broken(completions, **kwargs):
        raise RuntimeError("boom")

    fn = safe_reward(broken)
    with caplog.at_level(logging.WARNING, logger="rlattn.rewards.registry"):
        assert fn(["a", "b"]) == [None, None]
        assert fn(["c"]) == [None]
    assert (fn.stats.calls, fn.stats.samples, fn.stats.failed, fn.stats.none) == (2, 3, 3, 3)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "boom" in warnings[0].getMessage() and warnings[0].exc_info
    assert fn.stats.failed_frac == 1.0


def test_nan_and_bad_values_become_none():
    def shaky(completions, **kwargs):
        return [1, math.nan, None, float("inf"), "x", True]

    fn = safe_reward(shaky)
    assert fn(list("abcdef")) == [1.0, None, None, None, None, 1.0]
    assert (fn.stats.failed, fn.stats.none) == (3, 4)  # nan, inf, "x" failed; plus the function's own None
    assert fn.stats.as_metrics("shaky") == {"rewards/shaky/failed_frac": 0.5, "rewards/shaky/none_frac": 4 / 6}


def test_wrong_length_is_a_failure():
    fn = safe_reward(lambda completions, **kw: [1.0])
    assert fn(["a", "b"]) == [None, None]
    assert fn.stats.failed == 2


def test_log_metric_hook():
    logged = []
    fn = safe_reward(lambda completions, **kw: [1.0, math.nan])
    fn.__name__ = "demo"
    fn(["a", "b"], log_metric=lambda name, value: logged.append((name, value)))
    assert logged == [("rewards/demo/failed_frac", 0.5), ("rewards/demo/none_frac", 0.5)]


def test_wrapper_keeps_name_signature_and_is_idempotent():
    fn = safe_reward(_len_reward)
    assert isinstance(fn, SafeReward)
    assert fn.__name__ == "_len_reward"
    assert safe_reward(fn) is fn
    assert fn(["ab"]) == [2.0]


def test_async_reward_stays_async():
    async def judge(completions, **kwargs):
        return [1.0 if c == "yes" else math.nan for c in completions]

    fn = safe_reward(judge)
    assert asyncio.iscoroutinefunction(fn.__call__)
    assert asyncio.run(fn(["yes", "no"])) == [1.0, None]
    assert fn.stats.failed == 1


def test_wrapped_reward_pickles():
    fn = get_reward_fn("format")
    fn(["x"])
    clone = pickle.loads(pickle.dumps(fn))
    assert clone.__name__ == "format" and clone.stats.calls == 1
    assert clone([r"\boxed{1}"]) == [1.0]
