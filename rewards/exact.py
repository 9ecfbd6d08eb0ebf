"""``exact``: 1.0 when the completion's short answer equals ``solution`` as a string.

Why: the synthetic toy tasks (``synthetic_quadrant``: ``tl``/``tr``/``bl``/``br``;
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


class _ShortAnswerReward:
    """1.0 when the completion's short answer is one of the row's accepted answers, else 0.0.

    Subclasses name the dataset ``column`` and map its value to the accepted answers (``None``
    or empty: the row cannot be verified, score ``None``). Picklable, for reward workers.
    """

    __name__ = "short_answer"
    column = ""
    what = ""

    def __init__(self, case_sensitive: bool = False):
        self.case_sensitive = case_sensitive

    def __repr__(self) -> str:
        return f"{type(self).__name__}(case_sensitive={self.case_sensitive})"

    def _norm(self, text: str) -> str:
        return text if self.case_sensitive else text.casefold()

    def accepted(self, value: Any) -> list[str]:
        raise NotImplementedError

    def __call__(self, completions: Sequence[Any], **kwargs) -> list[float | None]:
        values = kwargs.get(self.column)
        if values is None:
            raise ValueError(f"the {self.__name__} reward needs {self.what}: a dataset column named '{self.column}'")
        if len(values) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(values)} {self.column}s")
        scores: list[float | None] = []
        for completion, value in zip(completions, values):
            allowed = {self._norm(a) for a in self.accepted(value) if a}
            if not allowed:
                scores.append(None)
                continue
            answer = extract_short_answer(completion_text(completion))
            scores.append(1.0 if answer and self._norm(answer) in allowed else 0.0)
        return scores


class ExactReward(_ShortAnswerReward):
    """The ``exact`` reward; built by :func:`get_exact_reward`."""

    __name__ = "exact"
    column = "solution"
    what = "the gold answers"

    def accepted(self, value: Any) -> list[str]:
        return [] if value is None else [str(value).strip()]


class ChoiceReward(_ShortAnswerReward):
    """The ``choice`` (format) reward; built by :func:`get_choice_reward`."""

    __name__ = "choice"
    column = "choices"
    what = "the valid answers"

    def accepted(self, value: Any) -> list[str]:
        return [str(c).strip() for c in (value or [])]


def _check_case_sensitive(name: str, case_sensitive: Any) -> None:
    if not isinstance(case_sensitive, bool):
        raise ValueError(f"{name}: case_sensitive must be true or false, got {case_sensitive!r}")


@register_reward("exact")
def get_exact_reward(case_sensitive: bool = False) -> ExactReward:
    """The ``exact`` reward; ``case_sensitive=True`` makes ``TR`` differ from ``tr``."""
    _check_case_sensitive("exact", case_sensitive)
    return ExactReward(case_sensitive=case_sensitive)


@register_reward("choice")
def get_choice_reward(case_sensitive: bool = False) -> ChoiceReward:
    """The ``choice`` (format) reward: 1.0 when the short answer is one of the row's ``choices``."""
    _check_case_sensitive("choice", case_sensitive)
    return ChoiceReward(case_sensitive=case_sensitive)
