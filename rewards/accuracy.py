"""``accuracy``: 1.0 when the model's final answer is mathematically equivalent to the gold answer.

Why it looks like this:

- The answer is the content of the completion's last *non-empty* ``\\boxed{}``
  (:func:`rlattn.rewards.extract.last_boxed`). Strict by default: no box, or only empty boxes,
  scores 0.0. ``fallback_last_number=True`` is the lenient variant: with no non-empty box, the
  completion's last plain number (:func:`rlattn.rewards.extract.last_number`: integer, decimal
  or ``a/b``, digit-group commas removed) is graded, as ``\\boxed{<number>}``. So what is graded
  is always a string we hold (:meth:`AccuracyReward.answer`), which evaluation stores and votes
  with, rather than whatever math-verify's own extraction finds in the raw text. Small models
  (the embedded SmolLM2-135M writes empty boxes) get no learning signal at all from the strict
  reward; the lenient one gives them one. LaTeX outside a box is not read (``\\frac{1}{2}``
  reads as ``2``): answers of that kind need the box.
- Equivalence is math-verify's (``verify(parse(gold), parse(pred))``: ``\\frac{1}{2}`` =
  ``0.5`` = ``\\dfrac12``, ``x=3`` = ``3``, ``5\\text{ cm}`` = ``5``, intervals, sets, tuples).
  Gold answers in datasets are bare LaTeX, which math-verify does not parse, so a gold without
  ``$``/``\\boxed``/``\\(``/``\\[`` is wrapped as ``$gold$``; the prediction is handed over
  as ``\\boxed{answer}``.
- Grading runs in :class:`~rlattn.rewards.grader.BoundedGrader` worker processes with a hard
  per-sample ``timeout``, so it works off the main thread and a pathological answer cannot hang
  training.

Scores: 1.0 equivalent; 0.0 not equivalent, no answer, or an answer refused by the grader's
pre-checks (over 2000 characters, a number over 1000 digits, brackets nested deeper than 10
counting the ``\\boxed{}`` wrapper, an exponent over 10^6, a numeric power tower, a factorial
of a 6-digit number); ``None`` when it cannot be verified (grading timed out, the worker
died, or the gold answer is missing or unusable). TRL logs the batch mean as
``rewards/accuracy/mean``.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from .extract import completion_text, last_boxed, last_number
from .grader import BoundedGrader, _check_timeout, get_default_grader
from .registry import register_reward

__all__ = ["AccuracyReward", "get_accuracy_reward", "wrap_gold"]

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def wrap_gold(gold: Any) -> str | None:
    """The gold answer as a string math-verify can parse, or None when there is none."""
    if gold is None or isinstance(gold, bool):
        return None
    if isinstance(gold, (int, float)):
        gold = repr(gold) if isinstance(gold, float) else str(gold)
    if not isinstance(gold, str):
        return None
    gold = gold.strip()
    if not gold:
        return None
    if "\\boxed" in gold or "\\(" in gold or "\\[" in gold or _UNESCAPED_DOLLAR.search(gold):
        return gold
    return f"${gold}$"


class AccuracyReward:
    """Callable reward (picklable, unlike a closure); built by :func:`get_accuracy_reward`."""

    __name__ = "accuracy"

    def __init__(self, fallback_last_number: bool = False, timeout: float = 5.0, grader: BoundedGrader | None = None):
        self.fallback_last_number = fallback_last_number
        self.timeout = timeout
        self.grader = grader

    def __repr__(self) -> str:
        return f"AccuracyReward(fallback_last_number={self.fallback_last_number}, timeout={self.timeout})"

    def answer(self, completion: Any) -> tuple[str | None, bool]:
        """``(answer, boxed)`` for one completion: the answer this reward grades (the last
        non-empty ``\\boxed{}`` content; lenient, with no such box: the last number; else None)
        and whether it came from a box."""
        text = completion_text(completion)
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed, True
        return (last_number(text) if self.fallback_last_number else None), False

    def prediction(self, completion: Any) -> str | None:
        """What goes to math-verify for one completion (``\\boxed{answer}``), or None when it has no answer."""
        answer, _ = self.answer(completion)
        return None if answer is None else f"\\boxed{{{answer}}}"

    def __call__(self, completions: Sequence[Any], solution: Sequence[Any] | None = None, **kwargs) -> list[float | None]:
        if solution is None:
            raise ValueError("the accuracy reward needs the gold answers: a dataset column named 'solution'")
        if len(solution) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(solution)} solutions")
        scores: list[float | None] = [0.0] * len(completions)
        todo: list[int] = []
        pairs: list[tuple[str, str]] = []
        for i, (completion, gold) in enumerate(zip(completions, solution)):
            gold_text = wrap_gold(gold)
            if gold_text is None:
                scores[i] = None
                continue
            pred = self.prediction(completion)
            if pred is None:
                continue  # no answer: 0.0
            todo.append(i)
            pairs.append((gold_text, pred))
        if pairs:
            grader = self.grader if self.grader is not None else get_default_grader()
            for i, verdict in zip(todo, grader.grade_batch(pairs, timeout=self.timeout)):
                scores[i] = None if verdict is None else float(verdict)
        return scores


@register_reward("accuracy")
def get_accuracy_reward(
    fallback_last_number: bool = False, timeout: float = 5.0, grader: BoundedGrader | None = None
) -> AccuracyReward:
    """The ``accuracy`` reward.

    Args:
        fallback_last_number: with no non-empty ``\\boxed{}``, grade the completion's last
            plain number (:func:`~rlattn.rewards.extract.last_number`) instead of scoring 0.0.
            Default False (strict).
        timeout: seconds of grading per sample before it counts as ``None``.
        grader: the :class:`BoundedGrader` to use (default: the process-wide shared one).
    """
    if not isinstance(fallback_last_number, bool):
        raise ValueError(f"accuracy: fallback_last_number must be true or false, got {fallback_last_number!r}")
    _check_timeout("accuracy: timeout", timeout)
    if grader is not None and not isinstance(grader, BoundedGrader):
        raise ValueError(f"accuracy: grader must be a BoundedGrader, got {type(grader).__name__}")
    return AccuracyReward(fallback_last_number=fallback_last_number, timeout=float(timeout), grader=grader)
