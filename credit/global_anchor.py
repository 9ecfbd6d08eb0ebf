"""``global_anchor``: amplify anchor tokens, the ones later tokens keep attending back to.

Idea. Global attention heads look far back; a token that receives much of that attention from the
tokens 10-100 positions later (high FAI) is an "anchor" the rest of the reasoning builds on. Those
tokens get more credit.

Formula (docs/credit.md). FAI[s] = mean over t ∈ R with s + 10 ≤ t ≤ s + 100 of Ā_glob[t,s]
(NaN when that set is empty; such tokens are never anchors);
T_glob = TopQ(FAI, q) (tokens of R with finite FAI ≥ quantile(FAI over them, 1−q), q = 0.4);
γ[t] = 1 + (γ_amp − 1)·1[t ∈ T_glob], γ_amp = 1.5.

Reference. Li et al., "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization", arXiv 2510.13554 — the "global-anchor" rows.

Versus plain GRPO. GRPO gives every token the sequence advantage A; here about q of the response
tokens with a defined FAI (the anchors) get γ_amp·A instead. γ is not renormalised.
"""

from __future__ import annotations

import torch

from rlattn.credit.registry import CreditConfig, register_credit
from rlattn.credit.selection import amplify, select_q

__all__ = ["global_anchor"]


@register_credit("global_anchor", needs=("attention",))
def global_anchor(
    waad: torch.Tensor,
    fai: torch.Tensor,
    mask: torch.Tensor,
    entropies: torch.Tensor | None = None,
    config: CreditConfig | None = None,
) -> torch.Tensor:
    """γ = γ_amp on T_glob = TopQ(FAI, q), 1 elsewhere. float32 [B, T]."""
    config = config if config is not None else CreditConfig()
    anchor = select_q(fai, mask, config.quantile, config.select)  # [B, T] T_glob
    return amplify(anchor, config.gamma)  # [B, T]
