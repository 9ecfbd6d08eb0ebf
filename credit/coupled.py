"""``coupled``: the paper's best strategy — anchors, with credit shared back to their preplan token.

Idea. Preplan tokens (WAAD jumps) open a chunk and anchors (high FAI) organise what follows; the
two come in a rhythm. An anchor that sits inside a chunk its preplan token just opened (low WAAD,
a large Δ within the last k tokens) is "locally dominated": part of its extra credit moves to the
token that introduced it.

Formula (docs/credit.md; c = γ_amp − 1, γ_amp = 1.5, α = 0.5, k = 3):
  T_glob = TopQ(FAI, q);
  D = { t ∈ T_glob : WAAD[t] ≤ median(WAAD over R) and
        max_{u∈[t−k,t−1]∩R} Δ[u] ≥ quantile(Δ over R, 0.6) }
      (both thresholds are ours: ``dominated_waad_quantile``, ``dominated_delta_quantile``);
  I(D) = { argmax_{u∈[t−k,t−1]∩R} Δ[u] : t ∈ D } (ties: the latest u; a set);
  combine="sum": γ = 1 + c·1[T_glob∖D] + (1−α)c·1[D] + α·c·1[I(D)]
      (indicators add; the most is 1 + (1+α)c = 1.75 with the defaults);
  combine="max": γ = 1 + max(c·1[T_glob∖D], (1−α)c·1[D], α·c·1[I(D)]) (the largest term's γ).
A dominated anchor keeps (1−α)c of its extra weight and its intro token gains α·c: the anchor's
credit is moved, not duplicated (an intro shared by several anchors gains α·c once).

Reference. Li et al., "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization", arXiv 2510.13554 — the "coupled rhythm" rows.

Versus plain GRPO. GRPO gives every token the sequence advantage A; here anchors and the preplan
tokens that introduce dominated anchors get up to (1 + (1+α)c)·A. γ is not renormalised or clipped.
"""

from __future__ import annotations

import torch

from rlattn.credit.registry import CreditConfig, register_credit
from rlattn.credit.selection import select_tokens

__all__ = ["coupled"]


@register_credit("coupled", needs=("attention",))
def coupled(
    waad: torch.Tensor,
    fai: torch.Tensor,
    mask: torch.Tensor,
    entropies: torch.Tensor | None = None,
    config: CreditConfig | None = None,
) -> torch.Tensor:
    """γ of the coupled rhythm (sum or max of the three terms). float32 [B, T]."""
    config = config if config is not None else CreditConfig()
    sets = select_tokens(waad, fai, mask, config, with_preplan=False)
    anchor, dominated, intro = sets["anchor"], sets["dominated"], sets["intro"]  # [B, T] each
    c = float(config.gamma) - 1.0
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    kept = torch.where(anchor & ~dominated, c, zero)  # [B, T] undominated anchors
    shared = torch.where(dominated, (1.0 - config.alpha) * c, zero)  # [B, T] dominated anchors keep 1−α
    moved = torch.where(intro, config.alpha * c, zero)  # [B, T] intro tokens gain α
    if config.combine == "sum":
        extra = kept + shared + moved  # [B, T]
    else:  # "max" (CreditConfig validates combine)
        extra = torch.maximum(torch.maximum(kept, shared), moved)  # [B, T]
    return 1.0 + extra  # [B, T] float32
