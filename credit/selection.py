"""Token selection for the credit strategies (docs/credit.md).

Li et al., "Attention Illuminates LLM Reasoning" (arXiv 2510.13554) pick the tokens whose advantage
is amplified from two attention statistics: WAAD (local-head look-back distance; a jump in WAAD marks
a *preplan* token that opens a new chunk) and FAI (how much later tokens attend back to a token; a
high FAI marks an *anchor*). This module turns WAAD and FAI into boolean token sets:

- ``waad_deltas``: Δ[t] = |WAAD[t] − WAAD[t+1]| for t, t+1 ∈ R; Δ = 0 at the last response token.
- ``top_q``: TopQ(x, q) = tokens of R with finite x and x ≥ quantile(x over those tokens, 1 − q)
  (linear interpolation, exactly ``torch.quantile``'s); ``bottom_q``: BottomQ(x, q), the tokens with
  x ≤ quantile(x, q) (``CreditConfig.select = "bottom"``, the paper's Table 5 ablation);
  ``select_q`` picks one of the two by name.
- ``dominated_anchors``: anchors t with WAAD[t] ≤ quantile(WAAD over R, 0.5) (the median, linear
  interpolation: the mean of the two middle values for an even count, not ``torch.median``'s lower
  one) and max_{u ∈ [t−k, t−1] ∩ R} Δ[u] ≥ quantile(Δ over R, 0.6). Both thresholds are ours, not
  the paper's, and are config options. An anchor with an empty window is never dominated.
- ``intro_tokens``: I(D) = { argmax_{u ∈ [t−k, t−1] ∩ R} Δ[u] : t ∈ D }, ties to the latest u.
- ``select_tokens``: all four sets (preplan, anchor, dominated, intro) at once; the strategies and
  ``credit_report`` share it.

Conventions. All inputs are [B, T] with B sequences and T positions; ``mask`` is bool [B, T], True
on the response tokens R (the tokens that receive loss). Padding may sit on both sides of a row; the
functions never assume R starts at column 0 or is right-aligned. Quantiles are per row, over that
row's R. Non-finite values (FAI is NaN where its horizon is empty) are never selected, and a row
with no finite value selects nothing. Everything is vectorised over rows and positions; the only
Python loop runs over the k offsets of the look-back window. Outputs live on the inputs' device.
Quantiles and comparisons are computed in float64 whatever the input dtype (a float32 input is
widened exactly), so the selected sets do not depend on the dtype: in float32, ``torch.quantile``
places the rank 0.6·(51 − 1) at 30.0000019 and would drop the token exactly at the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rlattn.credit.config import CreditConfig

__all__ = [
    "SELECTION_KEYS",
    "amplify",
    "dominated_anchors",
    "intro_tokens",
    "bottom_q",
    "select_q",
    "select_tokens",
    "top_q",
    "waad_deltas",
]

SELECTION_KEYS = ("preplan", "anchor", "dominated", "intro")


# ---------------------------------------------------------------------------------------------
# Checks and helpers
# ---------------------------------------------------------------------------------------------
def _check_pair(x: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor [B, T] (True on response tokens), got {got}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D [B, T], got shape {tuple(mask.shape)}")
    if not isinstance(x, torch.Tensor) or x.shape != mask.shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of the mask's shape {tuple(mask.shape)}, got {got}")


def _check_bool(x: torch.Tensor, name: str) -> None:
    if x.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor [B, T], got {x.dtype}")


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Everything is compared in float64: quantile ranks and thresholds must not depend on the dtype."""
    return x.to(torch.float64)


def _check_fraction(value: float, name: str, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (0 <= value if allow_zero else 0 < value) and value <= 1
    if not ok:
        raise ValueError(f"{name}={value!r} is not a number in {'[0, 1]' if allow_zero else '(0, 1]'}")


def _masked_quantile(x: torch.Tensor, mask: torch.Tensor, q: float | Sequence[float]) -> torch.Tensor:
    """Per-row quantile(s) of x over mask & finite, linear interpolation; NaN for an empty row.

    One ``torch.nanquantile`` call on a copy with NaN outside the selection, which equals
    ``torch.quantile`` on each row's selected values. q a float → [B, 1]; a sequence → [Q, B, 1].
    """
    masked = torch.where(mask & torch.isfinite(x), x, torch.nan)  # [B, T]
    if isinstance(q, (int, float)):
        if x.shape[-1] == 0:
            return x.new_full((x.shape[0], 1), torch.nan)  # [B, 1]
        return torch.nanquantile(masked, float(q), dim=-1, keepdim=True)  # [B, 1]
    qs = torch.tensor([float(v) for v in q], dtype=x.dtype, device=x.device)  # [Q]
    if x.shape[-1] == 0:
        return x.new_full((len(qs), x.shape[0], 1), torch.nan)  # [Q, B, 1]
    return torch.nanquantile(masked, qs, dim=-1, keepdim=True)  # [Q, B, 1]


def _window_argmax(delta: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every t: max and argmax of Δ[u] over the window u ∈ [t−k, t−1] ∩ R (finite Δ only).

    Returns ``best`` (float [B, T], −inf where the window is empty) and ``offset`` (int32 [B, T],
    the argmax is u = t − offset; 0 where the window is empty). Ties go to the latest u: offsets are
    visited from 1 (latest u) to k and only a strictly larger Δ replaces the current best.
    """
    B, T = delta.shape
    vals = torch.where(mask & torch.isfinite(delta), delta, -torch.inf)  # [B, T] Δ[u], −inf if u ∉ R
    best = torch.full_like(vals, -torch.inf)  # [B, T]
    offset = torch.zeros((B, T), dtype=torch.int32, device=delta.device)  # [B, T]
    for j in range(1, min(k, T - 1) + 1):
        cand = vals[:, : T - j]  # [B, T−j] Δ[t−j] for t = j..T−1
        cur = best[:, j:]  # [B, T−j]
        better = cand > cur  # [B, T−j]
        best[:, j:] = torch.where(better, cand, cur)
        offset[:, j:] = torch.where(better, j, offset[:, j:])
    return best, offset


def _intro_from_offsets(dominated: torch.Tensor, offset: torch.Tensor, k: int) -> torch.Tensor:
    """I(D): mark u = t − offset[t] for every dominated t (a set: repeats collapse)."""
    T = dominated.shape[1]
    intro = torch.zeros_like(dominated)  # [B, T]
    for j in range(1, min(k, T - 1) + 1):
        hit = dominated & (offset == j)  # [B, T] dominated t whose intro is t − j
        intro[:, : T - j] |= hit[:, j:]
    return intro


# ---------------------------------------------------------------------------------------------
# Public selection functions
# ---------------------------------------------------------------------------------------------
def waad_deltas(waad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Δ[t] = |WAAD[t] − WAAD[t+1]| where t and t+1 are both in R; 0 elsewhere.

    So Δ = 0 at the last response token of each row (and outside R). float [B, T]: float64 for a
    float64 input, float32 otherwise (the selections widen it to float64 before comparing).
    """
    _check_pair(waad, mask, "waad")
    w = waad if waad.dtype in (torch.float32, torch.float64) else waad.to(torch.float32)  # [B, T]
    delta = torch.zeros_like(w)  # [B, T]
    both = mask[:, :-1] & mask[:, 1:]  # [B, T−1] t and t+1 in R
    diff = (w[:, :-1] - w[:, 1:]).abs()  # [B, T−1]
    delta[:, :-1] = torch.where(both, diff, 0.0)
    return delta


def top_q(x: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """TopQ(x, q): tokens of R with finite x and x ≥ quantile(x over those tokens, 1 − q).

    Linear interpolation (``torch.quantile``'s default); ties at the threshold are all selected.
    A row without finite values on R selects nothing. bool [B, T].
    """
    _check_pair(x, mask, "x")
    _check_fraction(q, "q", allow_zero=False)
    x = _as_float(x)  # [B, T]
    threshold = _masked_quantile(x, mask, 1.0 - q)  # [B, 1]
    return mask & torch.isfinite(x) & (x >= threshold)  # [B, T]


def bottom_q(x: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """BottomQ(x, q): tokens of R with finite x and x ≤ quantile(x over those tokens, q). bool [B, T].

    The mirror of :func:`top_q` (ties at the threshold are all selected); the paper's Table 5
    ablation selects the bottom 40 % instead of the top 40 %.
    """
    _check_pair(x, mask, "x")
    _check_fraction(q, "q", allow_zero=False)
    x = _as_float(x)  # [B, T]
    threshold = _masked_quantile(x, mask, q)  # [B, 1]
    return mask & torch.isfinite(x) & (x <= threshold)  # [B, T]


def select_q(x: torch.Tensor, mask: torch.Tensor, q: float, select: str = "top") -> torch.Tensor:
    """:func:`top_q` for ``select="top"``, :func:`bottom_q` for ``"bottom"``. bool [B, T]."""
    if select == "top":
        return top_q(x, mask, q)
    if select == "bottom":
        return bottom_q(x, mask, q)
    raise ValueError(f"select={select!r} is not one of 'top', 'bottom'")


def dominated_anchors(
    waad: torch.Tensor,
    delta: torch.Tensor,
    anchor: torch.Tensor,
    mask: torch.Tensor,
    k: int = 3,
    waad_quantile: float = 0.5,
    delta_quantile: float = 0.6,
) -> torch.Tensor:
    """Locally dominated anchors D (spec §5; thresholds are ours).

    t ∈ anchor with WAAD[t] ≤ quantile(WAAD over R, ``waad_quantile``) and
    max_{u ∈ [t−k, t−1] ∩ R} Δ[u] ≥ quantile(Δ over R, ``delta_quantile``). ``delta`` is
    ``waad_deltas(waad, mask)``, ``anchor`` is TopQ(FAI, q). An anchor whose window holds no
    response token is never dominated. bool [B, T].
    """
    for name, t in (("waad", waad), ("delta", delta), ("anchor", anchor)):
        _check_pair(t, mask, name)
    _check_bool(anchor, "anchor")
    _check_k(k)
    _check_fraction(waad_quantile, "waad_quantile", allow_zero=True)
    _check_fraction(delta_quantile, "delta_quantile", allow_zero=True)
    w = _as_float(waad)  # [B, T]
    d = _as_float(delta)  # [B, T]
    best, _ = _window_argmax(d, mask, k)  # [B, T]
    waad_thr = _masked_quantile(w, mask, waad_quantile)  # [B, 1]
    delta_thr = _masked_quantile(d, mask, delta_quantile)  # [B, 1]
    return _dominated(w, best, anchor, mask, waad_thr, delta_thr)


def _dominated(w, best, anchor, mask, waad_thr, delta_thr) -> torch.Tensor:
    return anchor & mask & (w <= waad_thr) & (best >= delta_thr)  # [B, T]


def intro_tokens(
    delta: torch.Tensor, dominated: torch.Tensor, mask: torch.Tensor, k: int = 3
) -> torch.Tensor:
    """I(D) = { intro(t) : t ∈ D }, intro(t) = argmax_{u ∈ [t−k, t−1] ∩ R} Δ[u], ties → latest u.

    A set: two dominated anchors with the same intro mark it once. bool [B, T].
    """
    _check_pair(delta, mask, "delta")
    _check_pair(dominated, mask, "dominated")
    _check_bool(dominated, "dominated")
    _check_k(k)
    _, offset = _window_argmax(_as_float(delta), mask, k)  # [B, T]
    return _intro_from_offsets(dominated & mask, offset, k)  # [B, T]


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} is not an integer >= 1 (the look-back window of dominated anchors)")


def select_tokens(
    waad: torch.Tensor,
    fai: torch.Tensor,
    mask: torch.Tensor,
    config: CreditConfig | None = None,
    *,
    with_preplan: bool = True,
) -> dict[str, torch.Tensor]:
    """All token sets of spec §5 for one batch, as bool [B, T] masks (all inside R).

    Keys: ``preplan`` (T_loc = TopQ(Δ, q)), ``anchor`` (T_glob = TopQ(FAI, q)), ``dominated`` (D)
    and ``intro`` (I(D)). ``with_preplan=False`` skips T_loc (the coupled strategy does not use it).
    Δ's two quantiles (1 − q for T_loc and the dominated threshold) come from one sort. With
    ``config.select == "bottom"`` T_loc and T_glob are BottomQ instead (q for T_loc's quantile).
    """
    if config is None:
        from rlattn.credit.config import CreditConfig

        config = CreditConfig()
    _check_pair(waad, mask, "waad")
    _check_pair(fai, mask, "fai")
    w = _as_float(waad)  # [B, T]
    delta = waad_deltas(w, mask)  # [B, T]
    bottom = config.select == "bottom"
    qs = [config.dominated_delta_quantile] + ([config.quantile if bottom else 1.0 - config.quantile] if with_preplan else [])
    delta_thr = _masked_quantile(delta, mask, qs)  # [Q, B, 1]
    anchor = select_q(fai, mask, config.quantile, config.select)  # [B, T]
    best, offset = _window_argmax(delta, mask, config.k)  # [B, T], [B, T]
    waad_thr = _masked_quantile(w, mask, config.dominated_waad_quantile)  # [B, 1]
    dominated = _dominated(w, best, anchor, mask, waad_thr, delta_thr[0])  # [B, T]
    intro = _intro_from_offsets(dominated, offset, config.k)  # [B, T]
    out = {"anchor": anchor, "dominated": dominated, "intro": intro}
    if with_preplan:
        beyond = (delta <= delta_thr[1]) if bottom else (delta >= delta_thr[1])  # [B, T]
        out["preplan"] = mask & torch.isfinite(delta) & beyond  # [B, T]
    return {key: out[key] for key in SELECTION_KEYS if key in out}


def amplify(selected: torch.Tensor, gamma: float) -> torch.Tensor:
    """γ = 1 + (γ_amp − 1)·1[selected]: γ_amp on selected tokens, 1 elsewhere. float32 [B, T]."""
    return torch.where(selected, float(gamma), 1.0).to(torch.float32)  # [B, T]
