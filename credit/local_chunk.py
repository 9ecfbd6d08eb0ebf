"""``local_chunk``: amplify preplan tokens, where the local look-back distance (WAAD) jumps.

Idea. Local attention heads look back a short, steady distance inside a reasoning chunk; where that
distance changes sharply a new chunk starts, and the token there "preplans" it. Those tokens get
more credit.

Formula (docs/credit.md). WAAD[t] = Σ_{s≤t} Ā_loc[t,s]·min(t−s, W);
Δ[t] = |WAAD[t] − WAAD[t+1]| for t, t+1 ∈ R (0 at the last response token);
T_loc = TopQ(Δ, q) (tokens of R with Δ ≥ quantile(Δ over R, 1−q), q = 0.4);
γ[t] = 1 + (γ_amp − 1)·1[t ∈ T_loc], γ_amp = 1.5.

Reference. Li et al., "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization", arXiv 2510.13554 — the "local-chunk" rows.

Versus plain GRPO. GRPO gives every token the sequence advantage A; here about q of the response
tokens (the preplan ones) get γ_amp·A instead. γ is not renormalised, so the total weight grows.
"""

from __future__ import annotations

import torch

from rlattn.credit.registry import CreditConfig, register_credit
from rlattn.credit.selection import amplify, select_q, waad_deltas

__all__ = ["local_chunk"]


@register_credit("local_chunk", needs=("attention",))
def local_chunk(
    waad: torch.Tensor,
    fai: torch.Tensor,
    mask: torch.Tensor,
    entropies: torch.Tensor | None = None,
    config: CreditConfig | None = None,
) -> torch.Tensor:
    """γ = γ_amp on T_loc = TopQ(Δ, q), 1 elsewhere. float32 [B, T]."""
    config = config if config is not None else CreditConfig()
    delta = waad_deltas(waad.double(), mask)  # [B, T] in float64: the selection must not depend on the dtype
    preplan = select_q(delta, mask, config.quantile, config.select)  # [B, T] T_loc
    return amplify(preplan, config.gamma)  # [B, T]
