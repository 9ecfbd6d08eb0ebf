"""Generalised advantage estimation on completion tokens (Schulman et al. 2016), and whitening.

Per sequence b with L_b completion tokens (the valid positions of ``mask``, a prefix of the row:
TRL right-pads completions), token t is the action taken in state s_t = (prompt, y_<t):

    r_t   = −β·kl_t  (+ R_b at t = L_b − 1, the sequence reward at the last completion token)
    δ_t   = r_t + γ·V(s_{t+1}) − V(s_t),        V(s_{L_b}) = 0 (terminal)
    A_t   = Σ_{k ≥ 0} (γλ)^k δ_{t+k}             (computed backwards: A_t = δ_t + γλ·A_{t+1})
    G_t   = A_t + V(s_t)                          (the value targets)

λ = 1 gives Monte-Carlo returns minus the baseline (A_t = Σ γ^k r_{t+k} − V_t); λ = 0 gives the
one-step TD error δ_t. Outside the mask A and G are 0. Everything is float32, no gradient.
"""

from __future__ import annotations

import torch

__all__ = ["gae", "masked_whiten", "token_rewards"]


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """r [B, T]: the sequence reward on each row's last valid token, minus ``kl_coef·kl`` on every valid token.

    rewards: [B]; mask: [B, T] (bool or 0/1); kl: [B, T] per-token log π_old − log π_ref, or None.
    A row with no valid token gets no reward.
    """
    m = mask.bool()
    r = torch.zeros(m.shape, dtype=torch.float32, device=m.device)  # [B, T]
    if kl is not None and kl_coef:
        r = r - kl_coef * torch.where(m, kl.float(), 0.0)
    lengths = m.sum(1)  # [B]
    rows = torch.nonzero(lengths > 0).flatten()
    r[rows, lengths[rows] - 1] += rewards.float().to(m.device)[rows]
    return r


@torch.no_grad()
def gae(token_reward: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """``(advantages, returns)``, both float32 [B, T] and 0 outside ``mask`` (see the module docstring).

    token_reward: [B, T] from :func:`token_rewards`; values: [B, T] V(s_t) of the rollout critic.
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gae: gamma={gamma!r} and lam={lam!r} must lie in [0, 1]")
    m = mask.float()  # [B, T]
    v = values.float() * m  # [B, T]
    B, T = m.shape
    adv = torch.zeros(B, T, dtype=torch.float32, device=m.device)
    running = torch.zeros(B, dtype=torch.float32, device=m.device)  # A_{t+1}
    for t in reversed(range(T)):
        next_valid = m[:, t + 1] if t + 1 < T else torch.zeros_like(running)  # [B] is s_{t+1} non-terminal?
        next_v = v[:, t + 1] * next_valid if t + 1 < T else torch.zeros_like(running)
        delta = token_reward[:, t].float() + gamma * next_v - v[:, t]  # [B]
        running = (delta + gamma * lam * running * next_valid) * m[:, t]
        adv[:, t] = running
    returns = (adv + v) * m
    return adv, returns


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the valid tokens (mask), 0 outside; the std is the population one."""
    m = mask.bool()
    vals = x[m].float()
    if vals.numel() < 2:
        return torch.where(m, x.float() - (vals.mean() if vals.numel() else 0.0), 0.0)
    mean, std = vals.mean(), vals.std(unbiased=False)
    return torch.where(m, (x.float() - mean) / (std + eps), 0.0)
