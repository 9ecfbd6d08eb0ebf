"""Grading for evaluation: the training reward's bounded grader, plus what the report needs.

Why not a grader of its own: a benchmark score and the training reward must agree on what a
correct answer is, or "the reward went up but the score did not" means nothing. So a sample is
graded by :class:`rlattn.rewards.accuracy.AccuracyReward` itself: the last non-empty
``\\boxed{}`` (``lenient``, with no such box: the last plain number), math-verify equivalence
against the gold wrapped by ``wrap_gold``, in :class:`BoundedGrader` worker processes with a hard
per-sample timeout (pathological output cannot hang the run).

What this module adds is the per-sample verdict the report lists (:class:`SampleGrade`): the
answer **that was graded** (so maj@k votes with what was scored: under lenient grading a sample
correct by its last number votes with that number), whether the completion has a non-empty box
(the format rate), and ``correct`` as ``True`` / ``False`` / ``None``, where ``None``
("ungraded": timeout, worker death, unusable gold) is kept and counted, never dropped.

Two gradings, ``strict`` and ``lenient`` (:data:`GRADINGS`), can be reported from one run
(:func:`grade_samples`). A boxed sample is graded the same way by both (its box), and strict
scores an unboxed one as wrong, so strict is derived from the lenient verdicts rather than
graded again: one grader call per sample, and strict <= lenient on every sample by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rlattn.rewards import BoundedGrader
from rlattn.rewards.accuracy import AccuracyReward, wrap_gold

from .config import GRADINGS

__all__ = ["SampleGrade", "grade_completions", "grade_samples"]


@dataclass(frozen=True)
class SampleGrade:
    """One sample's verdict under one grading."""

    answer: str | None  # the graded answer: the last non-empty \boxed{} content, or (lenient, no box) the last number
    boxed: bool  # the completion has a non-empty \boxed{} (what the format rate counts)
    correct: bool | None  # None: could not be graded (counted and listed in the report)

    @property
    def has_format(self) -> bool:
        return self.boxed


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
        answer, boxed = reward.answer(completion)  # the same extraction the reward graded
        grades.append(SampleGrade(answer=answer, boxed=boxed, correct=None if score is None else score == 1.0))
    return grades


def grade_samples(
    completions: Sequence[str],
    golds: Sequence[str],
    grader: BoundedGrader,
    *,
    gradings: Sequence[str],
    timeout: float = 5.0,
) -> dict[str, list[SampleGrade]]:
    """``{grading: [SampleGrade per completion]}`` for every name in ``gradings`` (:data:`GRADINGS`).

    With ``lenient`` among them, each sample is graded once, leniently, and its strict verdict is
    derived: a boxed sample keeps its verdict; an unboxed one has no answer and is wrong (ungraded
    when the gold is unusable, as the reward scores it).
    """
    unknown = [g for g in gradings if g not in GRADINGS]
    if unknown or not gradings:
        raise ValueError(f"grading={list(gradings)!r}: each entry must be one of {', '.join(GRADINGS)}")
    if "lenient" not in gradings:
        return {"strict": grade_completions(completions, golds, grader, timeout=timeout)}
    lenient = grade_completions(completions, golds, grader, timeout=timeout, fallback_last_number=True)
    out = {"lenient": lenient}
    if "strict" in gradings:
        out["strict"] = [
            g if g.boxed else SampleGrade(answer=None, boxed=False, correct=None if wrap_gold(gold) is None else False)
            for g, gold in zip(lenient, golds)
        ]
    return {g: out[g] for g in gradings}
