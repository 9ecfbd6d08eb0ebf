"""Token-level advantages from sequence advantages and credit weights (docs/credit.md).

Idea. GRPO gives each sequence one group-normalised advantage A. Attention credit turns it into a
per-token advantage Ã[t] = γ[t]·A, which TRL's GRPO loss accepts as a (B, T) tensor; the PPO clip
then acts on A·γ.

Formula. sign="both" (default, paper v2 Table 7a): Ã[b, t] = γ[b, t]·A[b] for every sequence.
sign="positive" (paper v1): sequences with A ≥ 0 get γ·A; sequences with A < 0 keep A on every token.
sign="negative": sequences with A < 0 get γ·A; sequences with A ≥ 0 keep A on every token.
(A = 0 gives 0 under every sign.)

Reference. Li et al., "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization", arXiv 2510.13554, Eq. 12 and Table 7a.

Token advantages (PPO's GAE). Given A of shape [B, T], Ã[b, t] = γ[b, t]·A[b, t], and the sign
option acts per token: "positive" scales the tokens with A[b, t] ≥ 0, "negative" those with A < 0.

Versus plain GRPO. With γ ≡ 1 (``uniform``) this is A broadcast over T, which is exactly what TRL
does with a (B,) advantage. γ is detached: it carries no gradient.
"""

from __future__ import annotations

import torch

from rlattn.credit.config import SIGNS

__all__ = ["apply_credit"]


def apply_credit(advantages: torch.Tensor, gamma: torch.Tensor, sign: str = "both") -> torch.Tensor:
    """Ã = γ·A on the sequences selected by ``sign``, A broadcast elsewhere.

    advantages: float [B] (one per sequence) or [B, T] (one per token, e.g. GAE); gamma: float
    [B, T]. Returns float [B, T] (float32, or float64 if either input is float64).
    """
    if sign not in SIGNS:
        raise ValueError(f"apply_credit: sign={sign!r} is not one of " + ", ".join(repr(s) for s in SIGNS))
    token_level = (isinstance(advantages, torch.Tensor) and advantages.dim() == 2 and isinstance(gamma, torch.Tensor)
                   and gamma.shape == advantages.shape)
    if not isinstance(advantages, torch.Tensor) or (advantages.dim() != 1 and not token_level):
        got = tuple(advantages.shape) if isinstance(advantages, torch.Tensor) else type(advantages).__name__
        shape = tuple(gamma.shape) if isinstance(gamma, torch.Tensor) else "[B, T]"
        raise ValueError(f"apply_credit: advantages must be a 1-D tensor [B], got {got}, or token advantages of "
                         f"gamma's shape {shape}")
    if not isinstance(gamma, torch.Tensor) or gamma.dim() != 2 or gamma.shape[0] != advantages.shape[0]:
        got = tuple(gamma.shape) if isinstance(gamma, torch.Tensor) else type(gamma).__name__
        raise ValueError(
            f"apply_credit: gamma must be a tensor [B, T] with B = {advantages.shape[0]} "
            f"(the advantages' length), got {got}"
        )
    dtype = torch.promote_types(torch.promote_types(advantages.dtype, gamma.dtype), torch.float32)
    a = advantages.to(dtype)
    a = a[:, None] if a.dim() == 1 else a  # [B, 1] per sequence, or [B, T] per token
    g = gamma.detach().to(dtype)  # [B, T]
    scaled = a * g  # [B, T]
    if sign == "both":
        return scaled
    plain = a.expand_as(g)  # [B, T]
    selected = a >= 0 if sign == "positive" else a < 0  # [B, 1] or [B, T]
    return torch.where(selected, scaled, plain)  # [B, T]
