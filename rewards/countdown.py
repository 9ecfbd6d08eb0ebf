"""``countdown``: 1.0 when the completion's equation uses each given number once and hits the target.

Why: Countdown (TinyZero protocol, used by the paper's Countdown runs) is a reasoning task with
an exactly checkable answer and no sympy, so it trains fast and grades in microseconds.

The equation is taken from, in order:

1. the last ``<answer>...</answer>`` (and inside it the last non-empty ``\\boxed{}`` if any,
   since rlattn's R1 template asks for a box inside the answer tags);
2. else the last non-empty ``\\boxed{}``;
3. else the last line that holds nothing but an arithmetic expression (digits, ``+ - * /``,
   parentheses, optionally ``= <target>``).

It is checked by :func:`rlattn.data.countdown.verify_countdown_equation` (one verifier for data
and rewards): parsed with ``ast`` and never ``eval``'d, only non-negative integer literals,
binary ``+ - * /`` and parentheses, at most 256 characters, the literals equal to ``nums`` as a
multiset, the exact (``Fraction``) value within 1e-6 of ``target``. ``\\times``, ``\\div``,
``×``, ``÷`` are read as ``*`` and ``/``.

Dataset columns arrive as keywords: ``nums: list[list[int]]``, ``target: list[int]``.

Scores: 1.0 correct; ``format_score`` (default 0.0; TinyZero used 0.1) when the completion
gives a wrong equation in the requested form (answer tags or a box); 0.0 otherwise; ``None``
for a row whose ``nums``/``target`` is missing. TRL logs ``rewards/countdown/mean``.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from .extract import completion_text, last_boxed, last_tag
from .registry import register_reward

__all__ = ["CountdownReward", "extract_equation", "get_countdown_reward"]

# A line made only of an arithmetic expression (after the usual spellings), e.g. "(3 + 5) * 2 = 16".
_EXPRESSION_LINE = re.compile(r"(?:[0-9\s+\-*/().=×÷·−]|\\(?:times|div|cdot|left|right))+")
_HAS_OPERATOR = re.compile(r"\d\s*(?:[+\-*/×÷·−]|\\times|\\div|\\cdot)\s*[\d(]")


def extract_equation(text: str) -> tuple[str | None, bool]:
    """``(equation, in_requested_form)``: the completion's equation, and whether it came from
    answer tags or a box (True) or from a bare expression line (False)."""
    answer = last_tag(text, "answer")
    if answer is not None:
        boxed = last_boxed(answer)
        equation = (boxed if boxed is not None else answer).strip().strip("$").strip()
        if equation:
            return equation, True
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip("$").strip(), True
    for line in reversed(text.splitlines()):
        candidate = line.strip().strip("$").rstrip(".").strip()
        if candidate and _EXPRESSION_LINE.fullmatch(candidate) and _HAS_OPERATOR.search(candidate):
            return candidate, False
    return None, False


class CountdownReward:
    """Callable reward (picklable); built by :func:`get_countdown_reward`."""

    __name__ = "countdown"

    def __init__(self, format_score: float = 0.0):
        self.format_score = format_score

    def __repr__(self) -> str:
        return f"CountdownReward(format_score={self.format_score})"

    def __call__(
        self,
        completions: Sequence[Any],
        nums: Sequence[Sequence[int]] | None = None,
        target: Sequence[int] | None = None,
        **kwargs,
    ) -> list[float | None]:
        from rlattn.data.countdown import verify_countdown_equation  # lazy: pulls in `datasets`

        if nums is None or target is None:
            raise ValueError("the countdown reward needs the dataset columns 'nums' and 'target'")
        if not len(nums) == len(target) == len(completions):
            raise ValueError(f"{len(completions)} completions, {len(nums)} nums, {len(target)} targets")
        scores: list[float | None] = []
        for completion, row_nums, row_target in zip(completions, nums, target):
            if row_nums is None or row_target is None:
                scores.append(None)
                continue
            equation, in_form = extract_equation(completion_text(completion))
            if equation is None:
                scores.append(0.0)
            elif verify_countdown_equation(equation, row_nums, row_target):
                scores.append(1.0)
            else:
                scores.append(self.format_score if in_form else 0.0)
        return scores


@register_reward("countdown")
def get_countdown_reward(format_score: float = 0.0) -> CountdownReward:
    """The ``countdown`` reward; ``format_score`` in [0, 1) is paid for a wrong but well-placed equation."""
    if isinstance(format_score, bool) or not isinstance(format_score, (int, float)) or not 0.0 <= format_score < 1.0:
        raise ValueError(f"countdown: format_score must be a number in [0, 1), got {format_score!r}")
    return CountdownReward(format_score=float(format_score))
