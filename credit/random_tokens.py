"""``random``: amplify a seeded random fraction q of the response — the paper's control baseline.

Idea. Does credit help because of *which* tokens attention picks, or merely because some tokens get
more weight? This baseline amplifies as many tokens as the attention strategies, chosen at random.

Formula. U[t] ~ Uniform[0, 1) i.i.d. from ``torch.Generator().manual_seed(config.seed % 2**64)``;
S = TopQ(U, q) (the same TopQ protocol as the other strategies, so |S| ≈ q·|R| in each row);
γ[t] = 1 + (γ_amp − 1)·1[t ∈ S], i.e. γ_amp on S, 1 elsewhere.
The draw is made on the CPU (then moved to the inputs' device), so it is the same on every device
and independent of the global RNG: the same seed and shape give the same tokens. The function is
pure, so a trainer that wants fresh tokens every step must vary the seed (e.g. seed + step).

Reference. Li et al., "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization", arXiv 2510.13554 — the "random credit" rows (40% of tokens × 1.5).

Versus plain GRPO. GRPO gives every token the sequence advantage A; here a random q of the response
tokens get γ_amp·A. γ is not renormalised.
"""

from __future__ import annotations

import torch

from rlattn.credit.registry import CreditConfig, register_credit
from rlattn.credit.selection import amplify, select_q

__all__ = ["random_tokens"]


@register_credit("random", needs=("reseed",))
def random_tokens(
    waad: torch.Tensor,
    fai: torch.Tensor,
    mask: torch.Tensor,
    entropies: torch.Tensor | None = None,
    config: CreditConfig | None = None,
) -> torch.Tensor:
    """γ = γ_amp on a seeded random TopQ of R, 1 elsewhere. float32 [B, T]."""
    config = config if config is not None else CreditConfig()
    generator = torch.Generator(device="cpu").manual_seed(config.seed % 2**64)  # any int seed
    noise = torch.rand(mask.shape, generator=generator, dtype=torch.float32)  # [B, T] on CPU
    selected = select_q(noise.to(mask.device), mask, config.quantile, config.select)  # [B, T]
    return amplify(selected, config.gamma)  # [B, T]
