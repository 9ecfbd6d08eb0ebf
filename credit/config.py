"""``CreditConfig``: the settings every credit strategy receives (docs/credit.md §6, §8).

A plain dataclass, validated on construction and again by the checked credit function (a config
mutated after construction is re-checked). Errors name the key, the value and what is allowed;
``rlattn.config.AttnCreditConfig`` re-words ``CreditConfig.x`` as its YAML key ``credit_x``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMBINES", "CreditConfig", "SELECTS", "SIGNS"]

SIGNS = ("both", "positive", "negative")
COMBINES = ("sum", "max")
SELECTS = ("top", "bottom")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class CreditConfig:
    """Settings of the credit strategies (spec §6, §8). Validated on construction."""

    strategy: str = field(
        default="coupled",
        metadata={"help": "Credit strategy: a registered name (uniform, local_chunk, global_anchor, "
                  "coupled, random, high_entropy, or your own) or a dotted path 'package.module:function'."},
    )
    quantile: float = field(
        default=0.4,
        metadata={"help": "q of TopQ: the fraction of response tokens selected (0 < q <= 1)."},
    )
    gamma: float = field(
        default=1.5,
        metadata={"help": "γ_amp, the weight of selected tokens (>= 1; 1 gives plain GRPO)."},
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "coupled: share α of a dominated anchor's extra weight moved to its intro "
                  "token (0 <= α <= 1)."},
    )
    k: int = field(
        default=3,
        metadata={"help": "coupled: look-back window [t-k, t-1] for dominated anchors (integer >= 1)."},
    )
    sign: str = field(
        default="both",
        metadata={"help": "Which advantages γ scales: 'both', 'positive' (A >= 0 only) or 'negative' "
                  "(A < 0 only)."},
    )
    combine: str = field(
        default="sum",
        metadata={"help": "coupled: how overlapping terms combine: 'sum' (indicators add) or 'max' "
                  "(γ = the largest term's γ)."},
    )
    seed: int = field(
        default=0,
        metadata={"help": "random: seed of the token draw (same seed and shape, same tokens)."},
    )
    dominated_waad_quantile: float = field(
        default=0.5,
        metadata={"help": "coupled [ours]: an anchor is dominated only if WAAD[t] <= this quantile of "
                  "WAAD over R (0.5 = median, linear interpolation)."},
    )
    dominated_delta_quantile: float = field(
        default=0.6,
        metadata={"help": "coupled [ours]: ... and max Δ over its window >= this quantile of Δ over R."},
    )

    select: str = field(
        default="top",
        metadata={"help": "Which end of each score the strategies select: 'top' (TopQ, the paper's method) or "
                  "'bottom' (BottomQ: the q lowest-scoring tokens; the paper's Table 5 ablation)."},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the key, the value and what is allowed."""

        def bad(key: str, allowed: str) -> ValueError:
            return ValueError(f"CreditConfig.{key}={getattr(self, key)!r} {allowed}")

        if not isinstance(self.strategy, str) or not self.strategy:
            raise bad("strategy", "is not a non-empty string")
        if ":" in self.strategy:
            module, _, attr = self.strategy.partition(":")
            if not module or not attr:
                raise bad("strategy", "is not a dotted path of the form 'package.module:function'")
        else:
            from .registry import CREDIT_REGISTRY, valid_names

            if self.strategy not in CREDIT_REGISTRY:
                raise bad(
                    "strategy",
                    f"is not a registered credit strategy; valid names: {valid_names()} "
                    "(or a dotted path 'package.module:function')",
                )
        if not _is_number(self.quantile) or not 0 < self.quantile <= 1:
            raise bad("quantile", "is not a number in (0, 1]")
        if not _is_number(self.gamma) or self.gamma < 1:
            raise bad("gamma", "is not a finite number >= 1 (γ_amp amplifies; 1.0 gives plain GRPO)")
        if not _is_number(self.alpha) or not 0 <= self.alpha <= 1:
            raise bad("alpha", "is not a number in [0, 1]")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise bad("k", "is not an integer >= 1")
        if self.sign not in SIGNS:
            raise bad("sign", "is not one of " + ", ".join(repr(s) for s in SIGNS))
        if self.combine not in COMBINES:
            raise bad("combine", "is not one of " + ", ".join(repr(c) for c in COMBINES))
        if self.select not in SELECTS:
            raise bad("select", "is not one of " + ", ".join(repr(c) for c in SELECTS))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("seed", "is not an integer")
        for key in ("dominated_waad_quantile", "dominated_delta_quantile"):
            value = getattr(self, key)
            if not _is_number(value) or not 0 <= value <= 1:
                raise bad(key, "is not a number in [0, 1]")
