"""Scores from graded samples: avg@n, unbiased pass@k, maj@k, format/length/truncation rates.

Why these definitions (a report is only useful if its numbers mean one thing):

- **avg@n**: the mean over problems of ``c / n`` (``c`` correct out of ``n`` samples), i.e.
  pass@1 estimated from ``n`` samples. The paper's "AIME avg@16" is this with n = 16; its
  "pass@1" on the other sets is this with whatever n was drawn (n = 1 there).
- **pass@k** (k <= n): the unbiased estimator of Chen et al. 2021 (Codex paper),
  ``1 - C(n-c, k) / C(n, k)`` per problem, averaged over problems. It is computed with Python's
  exact integers (``math.comb``) and one correctly rounded division, so it is exact for any n
  (no ``1 - prod`` cancellation, no float overflow); ``pass@k`` with ``k = 1`` equals ``c / n``.
- **maj@k**: majority vote over the problem's *first* k samples (sample index order, so the
  value is deterministic and maj@n uses every sample). Each sample votes with the answer that
  was **graded** (the ``\\boxed{}`` content; under lenient grading, for a sample with no box,
  its last number), so with k = 1 maj@1 equals pass@1. Answers are grouped by their
  **normalised answer string** (:func:`normalise_answer`: the graded answer with whitespace, ``\\left``/``\\right``, ``\\!``/``\\,`` spacing, ``\\dfrac``/``\\tfrac`` and a
  trailing period removed or unified), not through the grader, because grouping by grader
  equivalence costs O(k^2) grader calls per problem. So ``0.5`` and ``\\frac12`` are two
  groups. Samples without an answer do not vote; a problem where no sample answered scores 0.
  **Ties** between groups of equal size go to the group whose first member appears earliest.
  The vote is correct when the winning group's first *graded* member is correct (members share
  one string, so they share one grade; an all-ungraded group counts as wrong).
- A sample whose grade is ``None`` (grading timed out, the worker died, the gold was unusable)
  counts as **not correct** in every rate and is counted in ``ungraded``, never dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = ["ProblemSamples", "dataset_metrics", "maj_at_k", "normalise_answer", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)``, with ``c`` of ``n`` correct.

    Raises ``ValueError`` unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name}={value!r} must be an integer")
    if n < 1:
        raise ValueError(f"pass_at_k: n={n} must be >= 1")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} must be between 0 and n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be between 1 and n={n} (pass@k needs at least k samples)")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # exact ints, one correctly rounded division


_SPACING = re.compile(r"\\[,!;:]|\\q?quad|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_TEXT_WRAP = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")


def normalise_answer(answer: str | None) -> str | None:
    """The string maj@k groups by: spacing, ``\\left``/``\\right``, ``\\dfrac``/``\\tfrac``,
    ``\\text{}`` wrappers, whitespace and a trailing period unified. ``None`` stays ``None``."""
    if answer is None:
        return None
    s = _SPACING.sub("", answer)
    s = _LEFT_RIGHT.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _TEXT_WRAP.sub(r"\1", s)
    s = "".join(s.split())
    s = s.rstrip(".")
    return s or None


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool | None], k: int) -> bool:
    """Is the majority answer among the first ``k`` samples correct? (tie rule: module docstring)

    Args:
        answers: graded answers in sample order (``None``: no answer; does not vote).
        correct: the grade of each sample (``None``: ungraded).
        k: how many of the first samples vote; ``1 <= k <= len(answers)``.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} grades")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: k={k!r} must be between 1 and the number of samples ({len(answers)})")
    groups: dict[str, list[int]] = {}  # insertion order = order of first appearance
    for i in range(k):
        key = normalise_answer(answers[i])
        if key is not None:
            groups.setdefault(key, []).append(i)
    if not groups:
        return False
    best = max(groups.values(), key=len)  # max keeps the first of equal sizes: earliest first member
    for i in best:
        if correct[i] is not None:
            return bool(correct[i])
    return False


@dataclass
class ProblemSamples:
    """All graded samples of one problem, in sample-index order."""

    problem_id: str
    answers: list[str | None]  # the graded answers (None: nothing was graded)
    correct: list[bool | None]
    lengths: list[int]
    truncated: list[bool]
    boxed: list[bool] | None = None  # has a non-empty \boxed{} (None: answers is not None, as under strict grading)

    def __post_init__(self):
        if self.boxed is None:
            self.boxed = [a is not None for a in self.answers]

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def num_correct(self) -> int:
        return sum(1 for c in self.correct if c)


def dataset_metrics(problems: Iterable[ProblemSamples], n: int, k_values: Sequence[int]) -> dict:
    """Aggregate one (model, dataset): rates are fractions in [0, 1], lengths in tokens.

    Keys: ``problems``, ``samples``, ``n``, ``avg@{n}``, ``pass@{k}`` and ``maj@{k}`` for each
    k, ``format_rate`` (share of samples with a non-empty ``\\boxed{}``), ``mean_length``,
    ``truncation_rate``, ``ungraded`` (count of samples whose grade is None).
    """
    problems = list(problems)
    if not problems:
        raise ValueError("dataset_metrics: no problems")
    for p in problems:
        if p.n != n:
            raise ValueError(f"dataset_metrics: problem {p.problem_id!r} has {p.n} samples, expected n={n}")
    for k in k_values:
        if k > n:
            raise ValueError(f"dataset_metrics: k={k} is larger than n={n}; pass@k and maj@k need k <= n")
    count = len(problems)
    samples = count * n
    out: dict = {"problems": count, "samples": samples, "n": n}
    out[f"avg@{n}"] = sum(p.num_correct / n for p in problems) / count
    for k in k_values:
        out[f"pass@{k}"] = sum(pass_at_k(n, p.num_correct, k) for p in problems) / count
    for k in k_values:
        out[f"maj@{k}"] = sum(maj_at_k(p.answers, p.correct, k) for p in problems) / count
    out["format_rate"] = sum(b for p in problems for b in p.boxed) / samples
    out["mean_length"] = sum(sum(p.lengths) for p in problems) / samples
    out["truncation_rate"] = sum(sum(p.truncated) for p in problems) / samples
    out["ungraded"] = sum(c is None for p in problems for c in p.correct)
    return out
