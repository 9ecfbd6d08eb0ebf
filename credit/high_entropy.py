"""``high_entropy``: amplify the highest-entropy tokens — the paper's "forking tokens" baseline.

Idea. Tokens where the policy is most uncertain are where reasoning forks (Wang et al. 2025,
"Beyond the 80/20 rule"). This baseline gives them the extra credit instead of attention-chosen
tokens, with the same TopQ protocol.

Formula. H[t] = entropy of the policy's next-token distribution at t (passed as ``entropies``);
S = TopQ(H, q) (tokens of R with finite H ≥ quantile(H over them, 1−q), q = 0.4);
γ[t] = 1 + (γ_amp − 1)·1[t ∈ S], i.e. γ_amp on S, 1 elsewhere.

Reference. Li et al., "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization", arXiv 2510.13554 — the "high-entropy credit" rows (top 40% × 1.5).

Versus plain GRPO. GRPO gives every token the sequence advantage A; here the top q of response
tokens by entropy get γ_amp·A. Unlike TRL's ``top_entropy_quantile`` it does not mask the other
tokens out of the loss, it only amplifies the selected ones. γ is not renormalised.
"""

from __future__ import annotations

import torch

from rlattn.credit.registry import CreditConfig, register_credit
from rlattn.credit.selection import amplify, select_q

__all__ = ["high_entropy"]


@register_credit("high_entropy", needs=("entropies",))
def high_entropy(
    waad: torch.Tensor,
    fai: torch.Tensor,
    mask: torch.Tensor,
    entropies: torch.Tensor | None = None,
    config: CreditConfig | None = None,
) -> torch.Tensor:
    """γ = γ_amp on TopQ(entropies, q), 1 elsewhere. float32 [B, T]."""
    config = config if config is not None else CreditConfig()
    if entropies is None:
        raise ValueError(
            "credit strategy 'high_entropy' needs per-token policy entropies: pass entropies= a float "
            "[B, T] tensor (the rollout policy's next-token entropy at each response token)"
        )
    selected = select_q(entropies, mask, config.quantile, config.select)  # [B, T]
    return amplify(selected, config.gamma)  # [B, T]
