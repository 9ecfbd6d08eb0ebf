"""Grading for evaluation: the training reward's bounded grader, plus what the report needs.

Why not a grader of its own: a benchmark score and the training reward must agree on what a
correct answer is, or "the reward went up but the score did not" means nothing. So a sample is
graded by :class:`rlattn.rewards.accuracy.AccuracyReward` itself: the last non-empty
``\\boxed{}`` (optionally the last number, ``accuracy_fallback_last_number``), math-verify
equivalence against the gold wrapped by ``wrap_gold``, in :class:`BoundedGrader` worker
processes with a hard per-sample timeout (pathological output cannot hang the run).

What this module adds is the per-sample verdict the report lists: the extracted answer, whether
it has a non-empty box (format), and ``correct`` as ``True`` / ``False`` / ``None`` where
``None`` ("ungraded": timeout, worker death, unusable gold) is kept and counted, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rlattn.rewards import BoundedGrader, completion_text, last_boxed
from rlattn.rewards.accuracy import AccuracyReward

__all__ = ["SampleGrade", "grade_completions"]


@dataclass(frozen=True)
class SampleGrade:
    """One sample's verdict."""

    answer: str | None  # the last non-empty \boxed{} content, or None
    correct: bool | None  # None: could not be graded (counted and listed in the report)

    @property
    def has_format(self) -> bool:
        return self.answer is not None


def grade_completions(
    completions: Sequence[str],
    golds: Sequence[str],
    grader: BoundedGrader,
    timeout: float = 5.0,
    fallback_last_number: bool = False,
) -> list[SampleGrade]:
    """Grade ``completions[i]`` against ``golds[i]`` exactly as the ``accuracy`` reward does."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    reward = AccuracyReward(fallback_last_number=fallback_last_number, timeout=float(timeout), grader=grader)
    scores = reward(list(completions), solution=list(golds))
    grades = []
    for completion, score in zip(completions, scores):
        answer = last_boxed(completion_text(completion))
        grades.append(SampleGrade(answer=answer, correct=None if score is None else score == 1.0))
    return grades
