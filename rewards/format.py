"""``format``: 1.0 when the completion states its final answer in a non-empty ``\\boxed{}``.

Why: the accuracy reward needs a boxed answer to grade, and small models often write an empty
``\\boxed{}`` (math-verify would still find a number elsewhere, so "has a box" must be checked
here, on the box's content). A format reward gives a signal for the shape of the answer before
the model gets answers right.

``think=True`` also asks for one reasoning block before the answer, R1-style: exactly one
``</think>``, at most one ``<think>`` and before it (a prompt that already ends in ``<think>``
is fine), non-empty reasoning, and the non-empty box *after* ``</think>``.

Scores: 1.0 or 0.0, never ``None``. TRL logs the batch mean as ``rewards/format/mean``.
"""

from __future__ import annotations

from typing import Any, Sequence

from .extract import completion_text, last_boxed
from .registry import register_reward

__all__ = ["FormatReward", "get_format_reward", "has_boxed_answer"]

_OPEN, _CLOSE = "<think>", "</think>"


def has_boxed_answer(text: str, think: bool = False) -> bool:
    """Does ``text`` end its work with a non-empty ``\\boxed{}`` (after ``</think>`` if ``think``)?"""
    if not think:
        return last_boxed(text) is not None
    if text.count(_CLOSE) != 1 or text.count(_OPEN) > 1:
        return False
    end = text.index(_CLOSE)
    start = text.find(_OPEN)
    if start > end:
        return False
    reasoning = text[start + len(_OPEN) : end] if start >= 0 else text[:end]
    if not reasoning.strip():
        return False
    return last_boxed(text[end + len(_CLOSE) :]) is not None


class FormatReward:
    """Callable reward (picklable); built by :func:`get_format_reward`."""

    __name__ = "format"

    def __init__(self, think: bool = False):
        self.think = think

    def __repr__(self) -> str:
        return f"FormatReward(think={self.think})"

    def __call__(self, completions: Sequence[Any], **kwargs) -> list[float]:
        return [1.0 if has_boxed_answer(completion_text(c), self.think) else 0.0 for c in completions]


@register_reward("format")
def get_format_reward(think: bool = False) -> FormatReward:
    """The ``format`` reward; ``think=True`` also requires a ``<think>...</think>`` block first."""
    if not isinstance(think, bool):
        raise ValueError(f"format: think must be true or false, got {think!r}")
    return FormatReward(think=think)
