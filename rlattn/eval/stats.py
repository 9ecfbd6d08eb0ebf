"""Paired comparisons of two models (or two training strategies) on the same problems.

Why paired: two models evaluated on the same problems differ by much less than their separate
confidence intervals suggest, because most problems are easy (or hard) for both. The right unit
is the **per-problem difference** ``d_i = b_i - a_i`` of their scores on problem ``i`` (the
problem's mean correctness over its n samples, c/n; greedy is n = 1, so 0 or 1), and the
question is whether the mean of ``d`` is away from 0.

- :func:`paired_bootstrap`: the mean difference and a **percentile bootstrap** interval over
  problems: resample the N problems with replacement ``resamples`` times, take each resample's
  mean of ``d``, and report the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those
  means (numpy's default linear-interpolation quantile). A fixed ``seed`` makes a report
  reproducible. Problems are the unit that is resampled because they are what a benchmark
  samples from; the n samples of a problem stay together.
- :func:`paired_bootstrap_grouped`: the **hierarchical** version for several training seeds
  (two strategies, each trained with seeds 1..S, evaluated on the same problems): each resample
  draws S seeds with replacement and, within each drawn seed, that seed's problems with
  replacement; the statistic is the mean over the drawn seeds of their resampled mean
  differences. So the interval covers seed-to-seed variation as well as problem sampling (a
  two-stage bootstrap; slightly conservative). The point estimate weights every seed equally.
  With one seed it *is* :func:`paired_bootstrap` (same draws from the same ``seed``, so the same
  interval, exactly).
- :func:`sign_test`: the two-sided exact sign test on the problems where B beats A (``wins``)
  and A beats B (``losses``), ties dropped: ``p = min(1, 2 P(X <= min(wins, losses)))`` with
  ``X ~ Binomial(wins + losses, 1/2)``, in exact integers. For n = 1 (0/1 scores) this is
  exactly McNemar's exact test.
- :func:`paired_difference`: all of the above for one pair, as a dict (what the report stores).

Everything is on plain lists of floats, so it is reusable outside the evaluator
(a strategy-comparison runner) and checkable by hand (tests/rlattn/eval/test_stats.py).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["paired_bootstrap", "paired_bootstrap_grouped", "paired_difference", "sign_test"]

#: Index draws held in memory at once (int64: 8 bytes each, so ~32 MB).
_CHUNK_ELEMENTS = 4_000_000


def _values(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got {arr.size} value(s) of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds a NaN or infinite value")
    return arr


def _check(resamples: int, level: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples={resamples!r} must be a positive integer (2000 or more for a 95 % interval)")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level={level!r} must be in (0, 1), e.g. 0.95")


def _interval(means: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _chunks(resamples: int, per_resample: int):
    """(start, stop) blocks of resamples, so one block draws at most ~_CHUNK_ELEMENTS indices."""
    step = max(1, _CHUNK_ELEMENTS // max(1, per_resample))
    for start in range(0, resamples, step):
        yield start, min(resamples, start + step)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """``(mean_diff, lo, hi)``: the mean of ``b[i] - a[i]`` and its percentile bootstrap interval
    over problems (module docstring). ``a`` and ``b`` are per-problem scores of the same problems
    in the same order, e.g. c/n; the result is in the same units (a fraction, not points)."""
    _check(resamples, level)
    a_arr, b_arr = _values(a, "a"), _values(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired_bootstrap: a has {a_arr.size} problems but b has {b_arr.size}; pair the same problems")
    d = b_arr - a_arr  # [N]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)  # [R]
    for start, stop in _chunks(resamples, d.size):
        idx = rng.integers(0, d.size, size=(stop - start, d.size))  # [R_chunk, N]
        means[start:stop] = d[idx].mean(axis=1)
    return math.fsum(d) / d.size, *_interval(means, level)


def paired_bootstrap_grouped(
    diffs_by_seed: Sequence[Sequence[float]], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """``(mean_diff, lo, hi)`` over several seeds: ``diffs_by_seed[s][i]`` is the per-problem
    difference (B - A) on problem ``i`` for seed ``s`` (seeds may hold different problem counts).
    The mean is the unweighted mean over seeds of each seed's mean; the interval resamples seeds,
    then problems within each drawn seed (module docstring)."""
    _check(resamples, level)
    if isinstance(diffs_by_seed, np.ndarray) and diffs_by_seed.ndim == 1:
        raise ValueError("paired_bootstrap_grouped takes one list of differences per seed, e.g. [[...]] for one seed")
    groups = [_values(d, f"diffs_by_seed[{s}]") for s, d in enumerate(diffs_by_seed)]
    if not groups:
        raise ValueError("paired_bootstrap_grouped: diffs_by_seed is empty; give one list of per-problem differences per seed")
    S = len(groups)
    problem_rng = np.random.default_rng(seed)  # the stream paired_bootstrap uses: one seed gives its draws
    seed_rng = np.random.default_rng([seed, 1])  # which seed fills each slot
    means = np.empty(resamples)  # [R]
    for start, stop in _chunks(resamples, S * max(g.size for g in groups)):
        picks = seed_rng.integers(0, S, size=(stop - start, S))  # [R_chunk, S]
        slot_means = np.empty(picks.shape)  # [R_chunk, S]: the resampled mean of the seed in each slot
        for k, d in enumerate(groups):
            where = picks == k  # [R_chunk, S]
            idx = problem_rng.integers(0, d.size, size=(int(where.sum()), d.size))  # [slots holding seed k, N_k]
            slot_means[where] = d[idx].mean(axis=1)
        means[start:stop] = slot_means.mean(axis=1)
    return math.fsum(math.fsum(d) / d.size for d in groups) / S, *_interval(means, level)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value for ``wins`` vs ``losses`` (ties excluded); 1.0 when both are 0."""
    for name, value in (("wins", wins), ("losses", losses)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"sign_test: {name}={value!r} must be a non-negative integer")
    m = wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(wins, losses) + 1))  # exact integers
    return min(1.0, 2 * tail / 2**m)


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict:
    """One paired comparison of B against A on the same problems, as the report stores it.

    Keys: ``problems``; ``delta`` (mean of b - a, a fraction), ``ci_low``, ``ci_high``
    (:func:`paired_bootstrap`); ``wins`` / ``losses`` / ``ties`` (problems where b > a, b < a,
    b == a); ``p_value`` (:func:`sign_test` on wins vs losses).
    """
    delta, lo, hi = paired_bootstrap(a, b, resamples=resamples, seed=seed, level=level)
    wins = sum(1 for x, y in zip(a, b) if y > x)
    losses = sum(1 for x, y in zip(a, b) if y < x)
    return {
        "problems": len(a),
        "delta": delta,
        "ci_low": lo,
        "ci_high": hi,
        "wins": wins,
        "losses": losses,
        "ties": len(a) - wins - losses,
        "p_value": sign_test(wins, losses),
    }
