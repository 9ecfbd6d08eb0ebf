"""Per-batch credit statistics for the trainer's logs.

TRL logs the sequence advantages before rlattn reweights them, so the trainer logs γ itself. For
one generation batch ``credit_report`` measures, over the response tokens R of the whole batch
(token-weighted, not a mean of per-sequence fractions):

- the fraction of R in each selected set, when given: preplan (T_loc), anchor (T_glob), dominated
  (D) and intro (I(D)) — pass ``**select_tokens(waad, fai, mask, config)``;
- γ's mean, min and max, the fraction of R with γ > 1 (amplified), and a histogram of γ over fixed
  bins [0, 1), [1, 1.25), [1.25, 1.5), [1.5, 1.75), [1.75, ∞) (with the defaults, uniform puts
  everything in [1, 1.25), local/global/random/high_entropy split it between [1, 1.25) and
  [1.5, 1.75), and coupled also uses [1.25, 1.5) and [1.75, ∞)).

``CreditReport.to_metrics("credit/")`` flattens it to ``dict[str, float]`` with namespaced keys,
e.g. ``credit/gamma_mean``, ``credit/anchor_frac``, ``credit/gamma_hist/1.50_1.75``. With no
response token in the batch, every statistic is NaN (and ``num_response_tokens`` is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["GAMMA_BIN_EDGES", "GAMMA_BIN_LABELS", "CreditReport", "credit_report"]

GAMMA_BIN_EDGES = (1.0, 1.25, 1.5, 1.75)  # inner edges; bins [0,1) [1,1.25) [1.25,1.5) [1.5,1.75) [1.75,∞)
GAMMA_BIN_LABELS = ("lt_1.00", "1.00_1.25", "1.25_1.50", "1.50_1.75", "ge_1.75")
_SETS = ("preplan", "anchor", "dominated", "intro")


@dataclass
class CreditReport:
    """γ and token-set statistics of one batch; fractions are over the batch's response tokens."""

    num_sequences: int
    num_response_tokens: int
    gamma_mean: float
    gamma_min: float
    gamma_max: float
    amplified_frac: float  # fraction of R with γ > 1
    gamma_hist: dict[str, float] = field(default_factory=dict)  # GAMMA_BIN_LABELS -> fraction of R
    preplan_frac: float | None = None  # None: the set was not given
    anchor_frac: float | None = None
    dominated_frac: float | None = None
    intro_frac: float | None = None

    def to_metrics(self, prefix: str = "credit/") -> dict[str, float]:
        """Flat ``{prefix + name: float}``; sets that were not given are left out."""
        metrics = {
            "num_response_tokens": float(self.num_response_tokens),
            "gamma_mean": self.gamma_mean,
            "gamma_min": self.gamma_min,
            "gamma_max": self.gamma_max,
            "amplified_frac": self.amplified_frac,
        }
        for name in _SETS:
            value = getattr(self, f"{name}_frac")
            if value is not None:
                metrics[f"{name}_frac"] = value
        for label, value in self.gamma_hist.items():
            metrics[f"gamma_hist/{label}"] = value
        return {prefix + key: float(value) for key, value in metrics.items()}


def credit_report(
    gamma: torch.Tensor,
    mask: torch.Tensor,
    preplan: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
    dominated: torch.Tensor | None = None,
    intro: torch.Tensor | None = None,
) -> CreditReport:
    """Statistics of γ (float [B, T]) over R (mask, bool [B, T]) and of the given bool [B, T] sets."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError("credit_report: mask must be a bool tensor [B, T] (True on response tokens)")
    if not isinstance(gamma, torch.Tensor) or gamma.shape != mask.shape:
        got = tuple(gamma.shape) if isinstance(gamma, torch.Tensor) else type(gamma).__name__
        raise ValueError(
            f"credit_report: gamma must be a tensor of the mask's shape {tuple(mask.shape)}, got {got}"
        )
    sets = {"preplan": preplan, "anchor": anchor, "dominated": dominated, "intro": intro}
    for name, s in sets.items():
        if s is None:
            continue
        if not isinstance(s, torch.Tensor) or s.dtype != torch.bool or s.shape != mask.shape:
            raise ValueError(
                f"credit_report: {name} must be a bool tensor of the mask's shape {tuple(mask.shape)}"
            )

    g = gamma.detach().to(torch.float32)[mask]  # [n] γ on R
    n = int(g.numel())
    given = [name for name in _SETS if sets[name] is not None]
    if n == 0:
        nan = math.nan
        return CreditReport(
            num_sequences=int(mask.shape[0]), num_response_tokens=0, gamma_mean=nan, gamma_min=nan,
            gamma_max=nan, amplified_frac=nan, gamma_hist={label: nan for label in GAMMA_BIN_LABELS},
            **{f"{name}_frac": nan for name in given},
        )
    edges = torch.tensor(GAMMA_BIN_EDGES, dtype=torch.float32, device=g.device)  # [4]
    bins = torch.bucketize(g, edges, right=True)  # [n] bin i holds edges[i-1] <= γ < edges[i]
    counts = torch.bincount(bins, minlength=len(GAMMA_BIN_LABELS)).double()  # [5]
    set_counts = [(sets[name] & mask).sum() for name in given]
    # Stack every statistic so they reach the host in one transfer.
    parts = [g.double().mean(), g.min().double(), g.max().double(), (g > 1).sum().double()]
    stats = torch.cat([torch.stack(parts + [c.double() for c in set_counts]), counts / n])  # [4 + |given| + 5]
    values = stats.tolist()
    hist = values[len(values) - len(GAMMA_BIN_LABELS) :]
    return CreditReport(
        num_sequences=int(mask.shape[0]),
        num_response_tokens=n,
        gamma_mean=values[0],
        gamma_min=values[1],
        gamma_max=values[2],
        amplified_frac=values[3] / n,
        gamma_hist=dict(zip(GAMMA_BIN_LABELS, hist)),
        **{f"{name}_frac": v / n for name, v in zip(given, values[4 : 4 + len(given)])},
    )
