"""rlattn.eval.stats: paired bootstrap (plain and over seeds) and the sign test, hand-computed."""

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from rlattn.eval.stats import paired_bootstrap, paired_bootstrap_grouped, paired_difference, sign_test


def _exact_bootstrap_interval(d):
    """The bootstrap distribution enumerated (all len(d)**len(d) resamples, equally likely) and its
    2.5 % and 97.5 % quantiles: the smallest mean whose cumulative probability reaches 1/40, 39/40.
    With many resamples the percentile interval converges to these (when no quantile sits on the
    edge of an atom)."""
    means = sorted(Fraction(sum(pick), len(d)) for pick in itertools.product(d, repeat=len(d)))
    total = len(means)

    def quantile(q):
        for i, m in enumerate(means, start=1):
            if Fraction(i, total) >= q:
                return float(m)

    return quantile(Fraction(1, 40)), quantile(Fraction(39, 40))


# ---- paired_bootstrap ----
def test_identical_inputs_give_zero_with_a_zero_width_interval():
    a = [1.0, 0.0, 0.5, 0.25, 1.0]
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("shift", [0.25, -0.5, 1.0])
def test_a_constant_shift_gives_exactly_that_shift(shift):
    a = [0.0, 0.25, 0.5, 0.0, 0.25, 0.0]
    b = [x + shift for x in a]
    assert paired_bootstrap(a, b, resamples=2000) == (shift, shift, shift)


def test_a_shift_not_exact_in_binary_is_that_shift_up_to_rounding():
    a = [0.0, 0.3, 0.6]  # (x + 0.1) - x is 0.1 only up to rounding, so the differences are not all equal
    delta, lo, hi = paired_bootstrap(a, [x + 0.1 for x in a], resamples=2000)
    assert delta == pytest.approx(0.1, abs=1e-12)
    assert lo == pytest.approx(0.1, abs=1e-12) and hi == pytest.approx(0.1, abs=1e-12)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # d = [0, 1]: resample means 0, 1/2, 1 with probability 1/4, 1/2, 1/4 -> 2.5 % and 97.5 % quantiles 0 and 1
        ([0, 0], [0, 1], (0.5, 0.0, 1.0)),
        # d = [0, 0, 0, 1]: mean X/4, X ~ Binomial(4, 1/4); P(X <= 2) = 0.949 < 0.975 < P(X <= 3) = 0.996 -> [0, 3/4]
        ([0, 0, 0, 0], [0, 0, 0, 1], (0.25, 0.0, 0.75)),
        # d = [-1, 0, 1]: mean (W - L)/3 over 27 equally likely resamples; P(mean = -1) = P(mean = 1) = 1/27 > 2.5 %
        ([1, 0, 0], [0, 0, 1], (0.0, -1.0, 1.0)),
    ],
)
def test_tiny_examples_match_the_enumerated_bootstrap_distribution(a, b, expected):
    d = [y - x for x, y in zip(a, b)]
    assert _exact_bootstrap_interval(d) == expected[1:]
    assert paired_bootstrap(a, b, resamples=10_000, seed=0) == expected


def test_the_interval_contains_the_mean_and_shrinks_with_more_problems():
    rng = random.Random(0)
    a = [float(rng.random() < 0.4) for _ in range(400)]
    b = [float(rng.random() < 0.5) for _ in range(400)]
    delta, lo, hi = paired_bootstrap(a, b)
    assert delta == pytest.approx(sum(b) / 400 - sum(a) / 400) and lo < delta < hi
    # the normal approximation of the standard error: the 95 % interval is about +-1.96 SE
    d = np.array(b) - np.array(a)
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    _, lo4, hi4 = paired_bootstrap(a * 4, b * 4)
    assert (hi4 - lo4) == pytest.approx((hi - lo) / 2, rel=0.15)  # 4x the problems: half the width


def test_deterministic_given_the_seed():
    rng = random.Random(1)
    a = [rng.random() for _ in range(50)]
    b = [rng.random() for _ in range(50)]
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b, seed=3) != paired_bootstrap(a, b, seed=4)
    assert paired_bootstrap(a, b, seed=3)[0] == paired_bootstrap(a, b, seed=4)[0]  # the point estimate is no draw


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: paired_bootstrap([1, 0], [1]), "a has 2 problems but b has 1"),
        (lambda: paired_bootstrap([], []), "non-empty"),
        (lambda: paired_bootstrap([float("nan")], [0]), "NaN"),
        (lambda: paired_bootstrap([0], [1], resamples=0), "resamples=0"),
        (lambda: paired_bootstrap([0], [1], level=1.0), "level=1.0"),
        (lambda: paired_bootstrap_grouped([]), "diffs_by_seed is empty"),
        (lambda: paired_bootstrap_grouped([[0.0], []]), r"diffs_by_seed\[1\]"),
    ],
)
def test_bad_inputs_fail_naming_what_is_wrong(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- paired_bootstrap_grouped ----
def test_grouped_on_one_seed_is_the_plain_bootstrap():
    rng = random.Random(2)
    a = [float(rng.random() < 0.3) for _ in range(120)]
    b = [float(rng.random() < 0.4) for _ in range(120)]
    d = [y - x for x, y in zip(a, b)]
    for seed in (0, 7):
        assert paired_bootstrap_grouped([d], seed=seed, resamples=4000) == paired_bootstrap(a, b, seed=seed, resamples=4000)


def test_grouped_degenerate_inputs_are_exact():
    # no variation anywhere: every resample is the common value
    assert paired_bootstrap_grouped([[0.5] * 3, [0.5] * 7]) == (0.5, 0.5, 0.5)
    # no variation within seeds (differences 0 and 1): a resample is the mean of 2 seeds drawn
    # with replacement, 0, 1/2 or 1 with probability 1/4, 1/2, 1/4 -> interval [0, 1]
    assert paired_bootstrap_grouped([[0.0] * 3, [1.0] * 5]) == (0.5, 0.0, 1.0)


def test_grouped_weights_seeds_equally_and_widens_with_seed_spread():
    base = [0.0, 1.0, 0.0, 0.0]  # mean 0.25 each
    delta, lo, hi = paired_bootstrap_grouped([base, base * 3])  # 4 and 12 problems: same mean
    assert delta == 0.25 and lo <= 0.25 <= hi
    same = paired_bootstrap_grouped([base * 5] * 4, resamples=4000)
    spread = paired_bootstrap_grouped([[x + s for x in base * 5] for s in (-0.2, 0.0, 0.1, 0.3)], resamples=4000)
    assert spread[0] == pytest.approx(0.3) and spread[2] - spread[1] > same[2] - same[1]


# ---- sign test and the report's summary ----
@pytest.mark.parametrize(
    "wins, losses, p",
    [
        (0, 0, 1.0),
        (3, 3, 1.0),  # 2 * P(X <= 3 | 6) = 2 * 42/64 > 1 -> 1
        (0, 5, 2 / 32),  # 2 * (1/2)^5
        (5, 0, 2 / 32),
        (1, 9, 2 * (1 + 10) / 1024),  # 2 * (C(10,0) + C(10,1)) / 2^10
        (2, 10, 2 * (1 + 12 + 66) / 4096),
    ],
)
def test_sign_test_hand_computed(wins, losses, p):
    assert sign_test(wins, losses) == pytest.approx(p, abs=1e-15)


def test_sign_test_is_exact_for_many_problems():
    assert sign_test(300, 300) == 1.0
    assert 0 < sign_test(250, 350) < 1e-4  # no overflow or underflow at 600 discordant problems
    with pytest.raises(ValueError, match="wins=-1"):
        sign_test(-1, 2)


def test_paired_difference_counts_wins_losses_ties():
    a = [1.0, 0.0, 0.5, 1.0, 0.0]
    b = [1.0, 1.0, 0.0, 1.0, 1.0]
    r = paired_difference(a, b, resamples=2000)
    assert (r["problems"], r["wins"], r["losses"], r["ties"]) == (5, 2, 1, 2)
    assert r["delta"] == pytest.approx(1.5 / 5) and r["ci_low"] <= r["delta"] <= r["ci_high"]
    assert r["p_value"] == sign_test(2, 1) == 1.0
