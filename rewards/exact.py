"""``exact``: 1.0 when the completion's short answer equals ``solution`` as a string.

Why: the synthetic backbone tasks (``synthetic_quadrant``: ``tl``/``tr``/``bl``/``br``;
``synthetic_key_lookup``: one digit) have one-word answers that need no math grader, and a tiny
model will rarely box its answer, so the first word of the completion counts too.

The answer is taken from, in order:

1. the last non-empty ``\\boxed{}`` (see :func:`~rlattn.rewards.extract.last_boxed`);
2. else the first whitespace-separated word of the completion.

Either way, surrounding whitespace and the punctuation ``. , : ; ! ? " ' ` * ( ) [ ]`` are
stripped, so ``"tr."``, ``"**tr**"`` and ``"(tr)"`` all read as ``tr``. The comparison is
case-insensitive (``str.casefold``) unless ``case_sensitive=True``; ``solution`` is compared
as ``str(solution).strip()``.

A second reward of the family, ``choice``, scores the *format* of such answers: 1.0 when the
short answer is one of the row's ``choices`` (dataset column), else 0.0. Used with a small weight
(``reward_funcs: [exact, choice]``, ``reward_weights: [1.0, 0.1]``) it keeps a policy answering in
the task's format while it learns which answer: with all-zero rewards for wrong answers, GRPO's
negative advantages push probability onto malformed replies. ``rewards/exact/mean`` stays the
plain accuracy.

Dataset column: ``solution``. Scores: 1.0 match; 0.0 otherwise (also for an empty
completion); ``None`` for a row whose ``solution`` is None or empty. A dataset without a
``solution`` column raises (the :func:`~rlattn.rewards.safe_reward` wrapper turns that into
``None`` for the batch and counts it as a failure). TRL logs ``rewards/exact/mean``.
"""

from __future__ import annotations

from typing import Any, Sequence

from .extract import completion_text, last_boxed
from .registry import register_reward

__all__ = ["ChoiceReward", "ExactReward", "extract_short_answer", "get_choice_reward", "get_exact_reward"]

_PUNCTUATION = ".,:;!?\"'`*()[]"


def extract_short_answer(text: str) -> str:
    """The answer in ``text``: the last non-empty box, else the first word; punctuation-stripped."""
    boxed = last_boxed(text)
    if boxed is not None:
        candidate = boxed
    else:
        words = text.split()
        candidate = words[0] if words else ""
    return candidate.strip().strip(_PUNCTUATION).strip()


class ExactReward:
    """Callable reward (picklable); built by :func:`get_exact_reward`."""

    __name__ = "exact"

    def __init__(self, case_sensitive: bool = False):
        self.case_sensitive = case_sensitive

    def __repr__(self) -> str:
        return f"ExactReward(case_sensitive={self.case_sensitive})"

    def _norm(self, text: str) -> str:
        return text if self.case_sensitive else text.casefold()

    def __call__(
        self, completions: Sequence[Any], solution: Sequence[Any] | None = None, **kwargs
    ) -> list[float | None]:
        if solution is None:
            raise ValueError("the exact reward needs the gold answers: a dataset column named 'solution'")
        if len(solution) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(solution)} solutions")
        scores: list[float | None] = []
        for completion, gold in zip(completions, solution):
            gold_text = "" if gold is None else str(gold).strip()
            if not gold_text:
                scores.append(None)
                continue
            answer = extract_short_answer(completion_text(completion))
            scores.append(1.0 if answer and self._norm(answer) == self._norm(gold_text) else 0.0)
        return scores


@register_reward("exact")
def get_exact_reward(case_sensitive: bool = False) -> ExactReward:
    """The ``exact`` reward; ``case_sensitive=True`` makes ``TR`` differ from ``tr``."""
    if not isinstance(case_sensitive, bool):
        raise ValueError(f"exact: case_sensitive must be true or false, got {case_sensitive!r}")
    return ExactReward(case_sensitive=case_sensitive)


class ChoiceReward:
    """Callable reward (picklable); built by :func:`get_choice_reward`."""

    __name__ = "choice"

    def __init__(self, case_sensitive: bool = False):
        self.case_sensitive = case_sensitive

    def __repr__(self) -> str:
        return f"ChoiceReward(case_sensitive={self.case_sensitive})"

    def _norm(self, text: str) -> str:
        return text if self.case_sensitive else text.casefold()

    def __call__(self, completions: Sequence[Any], choices: Sequence[Any] | None = None, **kwargs) -> list[float | None]:
        if choices is None:
            raise ValueError("the choice reward needs the valid answers: a dataset column named 'choices'")
        if len(choices) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(choices)} rows of choices")
        scores: list[float | None] = []
        for completion, allowed in zip(completions, choices):
            if not allowed:
                scores.append(None)
                continue
            answer = extract_short_answer(completion_text(completion))
            scores.append(1.0 if answer and self._norm(answer) in {self._norm(str(c).strip()) for c in allowed} else 0.0)
        return scores


@register_reward("choice")
def get_choice_reward(case_sensitive: bool = False) -> ChoiceReward:
    """The ``choice`` (format) reward: 1.0 when the short answer is one of the row's ``choices``."""
    if not isinstance(case_sensitive, bool):
        raise ValueError(f"choice: case_sensitive must be true or false, got {case_sensitive!r}")
    return ChoiceReward(case_sensitive=case_sensitive)
