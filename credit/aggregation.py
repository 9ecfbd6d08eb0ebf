"""Attention of chosen query rows, averaged over layers and heads, with attention sinks removed.

Why: "where does this position look", as one distribution over key columns, serves more than one
reader: a policy that re-selects the states it reads by attention, and typed attention diagnostics
(how much the completion attends to columns of a given kind). Both read post-RoPE q/k captured by
:mod:`rlattn.credit.capture`, so selection and credit use one definition and cannot drift apart.

Sinks (arXiv 2410.10781): the first real token of a sequence soaks up attention as a
non-informative key bias. :func:`sink_mask` marks the first ``num_sinks`` real columns of each
row; :func:`drop_columns` zeroes them and renormalises, so what remains compares real content.
"""

from __future__ import annotations

import torch

# Glossary: B batch, N keys (sequence length), R query rows, H query heads, KV key/value heads, D head dim.


def attention_rows(q: torch.Tensor, k: torch.Tensor, scaling: float, key_mask: torch.Tensor,
                   rows: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention of the query rows ``rows`` in fp32, averaged over heads.

    q: [B, H, N, D], k: [B, KV, N, D] (GQA: H a multiple of KV), key_mask: bool [B, N] (real
    tokens), rows: long [R] query positions. Returns [B, R, N]; each row sums to 1 over the real,
    causally visible keys (0 elsewhere); a row with no visible real key is all zeros.
    """
    B, H, N, D = q.shape
    KV = k.shape[1]
    qr = q[:, :, rows].float().view(B, KV, H // KV, len(rows), D)  # [B, KV, G, R, D]
    scores = torch.matmul(qr, k.float()[:, :, None].transpose(-1, -2)).view(B, H, len(rows), N) * scaling  # [B, H, R, N]
    visible = (torch.arange(N, device=q.device)[None, :] <= rows[:, None])[None] & key_mask.to(q.device)[:, None, :]  # [B, R, N]
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # [B, H, R, N]
    return probs.mean(1)  # [B, R, N]


def sink_mask(key_mask: torch.Tensor, num_sinks: int = 1) -> torch.Tensor:
    """bool [B, N]: the first ``num_sinks`` real (key_mask) columns of each row."""
    if num_sinks < 0:
        raise ValueError(f"num_sinks={num_sinks!r} must be >= 0")
    rank = key_mask.long().cumsum(1)  # [B, N] 1-based rank among real tokens
    return key_mask.bool() & (rank <= num_sinks)


def drop_columns(weights: torch.Tensor, drop: torch.Tensor, renormalise: bool = True) -> torch.Tensor:
    """Zero the columns ``drop`` (bool [B, N]) of ``weights`` [B, R, N] and renormalise each row."""
    out = weights.masked_fill(drop[:, None, :].to(weights.device), 0.0)  # [B, R, N]
    if renormalise:
        out = out / out.sum(-1, keepdim=True).clamp_min(1e-12)
    return out
