"""``uniform``: every token weighs 1 — plain GRPO, the control of every credit experiment.

Idea. No attention credit: the sequence's group-normalised advantage A reaches every response
token unchanged, exactly as in TRL's GRPOTrainer.

Formula. γ[t] = 1 for all t, so Ã[t] = γ[t]·A = A (docs/credit.md).

Reference. Li et al., "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization", arXiv 2510.13554 — the "GRPO" rows of its tables.

Versus plain GRPO. None, by construction: multiplying by 1.0 is exact in floating point, so this
strategy must reproduce TRL's GRPO loss bit for bit (the project's invariant test).
"""

from __future__ import annotations

import torch

from rlattn.credit.registry import CreditConfig, register_credit

__all__ = ["uniform"]


@register_credit("uniform", needs=("identity",))
def uniform(
    waad: torch.Tensor,
    fai: torch.Tensor,
    mask: torch.Tensor,
    entropies: torch.Tensor | None = None,
    config: CreditConfig | None = None,
) -> torch.Tensor:
    """γ = 1 everywhere. float32 [B, T] on the mask's device."""
    return torch.ones(mask.shape, dtype=torch.float32, device=mask.device)  # [B, T]
