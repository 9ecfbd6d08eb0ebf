"""``soft_overlong``: DAPO's soft overlong punishment, a length penalty near the length limit.

Why: completions cut off at ``max_completion_length`` get a reward for an answer they never
finished, which is noise; DAPO (Yu et al. 2025, arXiv 2503.14476, Eq. 13) instead ramps a
penalty in over the last ``soft_punish_cache`` tokens before the limit:

    R(L) = 0                              if L <= Lmax - Lcache
         = ((Lmax - Lcache) - L) / Lcache if Lmax - Lcache < L <= Lmax
         = -1                             if L > Lmax

with ``L`` the completion's length in tokens, ``Lmax = max_completion_len`` and
``Lcache = soft_punish_cache``. It never rewards short answers, only punishes long ones; add it
next to a correctness reward. ``soft_punish_cache=0`` is a hard cut: -1 only above ``Lmax``.

Lengths come from the ``completion_ids`` TRL passes to every reward (the generated token ids,
after truncation at ``max_completion_length``); without them the reward raises, which the
safety wrapper turns into ``None`` with a warning. TRL logs ``rewards/soft_overlong/mean``.
"""

from __future__ import annotations

from typing import Any, Sequence

from .registry import register_reward

__all__ = ["SoftOverlongReward", "get_soft_overlong_reward", "soft_overlong_penalty"]


def soft_overlong_penalty(length: int, max_completion_len: int, soft_punish_cache: int) -> float:
    """DAPO's Eq. 13 for one completion of ``length`` tokens."""
    start = max_completion_len - soft_punish_cache
    if length <= start:
        return 0.0
    if length <= max_completion_len:
        return (start - length) / soft_punish_cache
    return -1.0


class SoftOverlongReward:
    """Callable reward (picklable); built by :func:`get_soft_overlong_reward`."""

    __name__ = "soft_overlong"

    def __init__(self, max_completion_len: int, soft_punish_cache: int):
        self.max_completion_len = max_completion_len
        self.soft_punish_cache = soft_punish_cache

    def __repr__(self) -> str:
        return f"SoftOverlongReward(max_completion_len={self.max_completion_len}, soft_punish_cache={self.soft_punish_cache})"

    def __call__(
        self, completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None = None, **kwargs
    ) -> list[float]:
        if completion_ids is None:
            raise ValueError("the soft_overlong reward needs the completion_ids keyword (TRL's GRPOTrainer passes it)")
        if len(completion_ids) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(completion_ids)} completion_ids")
        return [soft_overlong_penalty(len(ids), self.max_completion_len, self.soft_punish_cache) for ids in completion_ids]


@register_reward("soft_overlong")
def get_soft_overlong_reward(max_completion_len: int, soft_punish_cache: int) -> SoftOverlongReward:
    """The ``soft_overlong`` reward.

    Args:
        max_completion_len: ``Lmax``, usually the trainer's ``max_completion_length``.
        soft_punish_cache: ``Lcache``, the tokens before ``Lmax`` over which the penalty ramps
            from 0 to -1; ``0 <= soft_punish_cache <= max_completion_len``.
    """
    for key, value in (("max_completion_len", max_completion_len), ("soft_punish_cache", soft_punish_cache)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"soft_overlong: {key} must be an integer number of tokens, got {value!r}")
    if max_completion_len < 1:
        raise ValueError(f"soft_overlong: max_completion_len must be >= 1, got {max_completion_len}")
    if not 0 <= soft_punish_cache <= max_completion_len:
        raise ValueError(
            f"soft_overlong: soft_punish_cache must be in [0, max_completion_len={max_completion_len}], got {soft_punish_cache}"
        )
    return SoftOverlongReward(max_completion_len, soft_punish_cache)
