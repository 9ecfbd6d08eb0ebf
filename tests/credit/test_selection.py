"""Token selection (docs/credit.md) on hand-built tensors with hand-computed expectations."""

from __future__ import annotations

import math

import pytest
import torch

from rlattn.credit.registry import CreditConfig
from rlattn.credit.selection import (
    SELECTION_KEYS,
    amplify,
    bottom_q,
    dominated_anchors,
    intro_tokens,
    select_q,
    select_tokens,
    top_q,
    waad_deltas,
)

NAN = math.nan


def positions(mask_row: torch.Tensor) -> list[int]:
    return torch.nonzero(mask_row).flatten().tolist()


# ---------------------------------------------------------------------------------------------
# The main hand-built row (T = 14): left pad {0}, prompt {1}, response R = 2..12, right pad {13}.
# ---------------------------------------------------------------------------------------------
#   t      :  0  1   2  3  4  5  6  7  8  9  10  11  12  13
#   WAAD   :  0  9   1  1  4  4  1  1  8  8   2   6   6   0    (9 in the prompt is junk: not in R)
#   Δ (R)  :  .  .   0  3  0  3  0  7  0  6   4   0   0   .    |WAAD[t] − WAAD[t+1]|; Δ[12] = 0 (last)
#   FAI    : nan 5   1  1  1  0  1  1  1  0   1 nan nan nan    (NaN at the response end: empty horizon)
#
# Δ over R sorted: [0,0,0,0,0,0,3,3,4,6,7], n = 11 → quantile 0.6 at rank 0.6·10 = 6 → 3.
# WAAD over R sorted: [1,1,1,1,2,4,4,6,6,8,8] → median (rank 5) = 4.
# TopQ(FAI, 0.4): finite FAI on R = t 2..10 = [1,1,1,0,1,1,1,0,1], sorted [0,0,1,1,1,1,1,1,1],
#   quantile 0.6 at rank 0.6·8 = 4.8 → 1 → anchors (ties all in) A = {2,3,4,6,7,8,10}.
# TopQ(Δ, 0.4): Δ ≥ 3 → T_loc = {3,5,7,9,10}.
# Dominated (WAAD ≤ 4 and max Δ over [t−3, t−1] ∩ R ≥ 3), anchor by anchor:
#   t=2 : WAAD 1, window [−1,1] ∩ R = ∅                     → not dominated (empty window)
#   t=3 : WAAD 1, window {2}: Δ 0 < 3                        → not dominated
#   t=4 : WAAD 4 ≤ 4, window {2,3}: Δ 0,3 → max 3 ≥ 3        → dominated, intro 3
#   t=6 : WAAD 1, window {3,4,5}: Δ 3,0,3 → tie, latest u=5  → dominated, intro 5
#   t=7 : WAAD 1, window {4,5,6}: Δ 0,3,0 → u=5              → dominated, intro 5 (shared)
#   t=8 : WAAD 8 > 4                                          → not dominated
#   t=10: WAAD 2, window {7,8,9}: Δ 7,0,6 → u=7              → dominated, intro 7
# D = {4,6,7,10}; I(D) = {3,5,7}.
MAIN_WAAD = [0, 9, 1, 1, 4, 4, 1, 1, 8, 8, 2, 6, 6, 0]
MAIN_FAI = [NAN, 5, 1, 1, 1, 0, 1, 1, 1, 0, 1, NAN, NAN, NAN]
MAIN_R = list(range(2, 13))
MAIN_DELTA = [0, 0, 0, 3, 0, 3, 0, 7, 0, 6, 4, 0, 0, 0]
MAIN_PREPLAN = [3, 5, 7, 9, 10]
MAIN_ANCHOR = [2, 3, 4, 6, 7, 8, 10]
MAIN_DOMINATED = [4, 6, 7, 10]
MAIN_INTRO = [3, 5, 7]


def main_row() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    waad = torch.tensor([MAIN_WAAD], dtype=torch.float32)  # [1, 14]
    fai = torch.tensor([MAIN_FAI], dtype=torch.float32)  # [1, 14]
    mask = torch.zeros(1, 14, dtype=torch.bool)  # [1, 14]
    mask[0, MAIN_R] = True
    return waad, fai, mask


def test_main_row_padding_both_sides():
    waad, fai, mask = main_row()
    delta = waad_deltas(waad, mask)
    assert delta[0].tolist() == MAIN_DELTA  # prompt junk WAAD 9 does not leak into Δ[1] or Δ[2]
    assert positions(top_q(delta, mask, 0.4)[0]) == MAIN_PREPLAN
    anchor = top_q(fai, mask, 0.4)
    assert positions(anchor[0]) == MAIN_ANCHOR  # FAI 5 in the prompt is ignored
    dominated = dominated_anchors(waad, delta, anchor, mask, k=3)
    assert positions(dominated[0]) == MAIN_DOMINATED
    assert positions(intro_tokens(delta, dominated, mask, k=3)[0]) == MAIN_INTRO


def test_select_tokens_main_row():
    waad, fai, mask = main_row()
    sets = select_tokens(waad, fai, mask, CreditConfig())
    assert tuple(sets) == SELECTION_KEYS
    assert positions(sets["preplan"][0]) == MAIN_PREPLAN
    assert positions(sets["anchor"][0]) == MAIN_ANCHOR
    assert positions(sets["dominated"][0]) == MAIN_DOMINATED
    assert positions(sets["intro"][0]) == MAIN_INTRO
    assert all(s.dtype == torch.bool and not (s & ~mask).any() for s in sets.values())
    assert "preplan" not in select_tokens(waad, fai, mask, CreditConfig(), with_preplan=False)


def test_select_tokens_thresholds_are_config_options():
    waad, fai, mask = main_row()
    # dominated_waad_quantile = 0.2: WAAD quantile at rank 0.2·10 = 2 → 1, so only WAAD-1 anchors
    # (t = 2, 3, 6, 7) qualify; of those 6 and 7 have a window max ≥ 3 → D = {6, 7}, I = {5}.
    sets = select_tokens(waad, fai, mask, CreditConfig(dominated_waad_quantile=0.2))
    assert positions(sets["dominated"][0]) == [6, 7]
    assert positions(sets["intro"][0]) == [5]
    # dominated_delta_quantile = 0.9: Δ quantile at rank 9 → 6; windows with a Δ ≥ 6 hold u = 7 or
    # u = 9: t=10 (window {7,8,9}, max 7) → D = {10}, I = {7}.
    sets = select_tokens(waad, fai, mask, CreditConfig(dominated_delta_quantile=0.9))
    assert positions(sets["dominated"][0]) == [10]
    assert positions(sets["intro"][0]) == [7]
    # k = 1: windows {t−1}: t=4 (Δ[3]=3 ✓), t=6 (Δ[5]=3 ✓), t=7 (Δ[6]=0 ✗), t=10 (Δ[9]=6 ✓)
    # → D = {4, 6, 10}, I = {3, 5, 9}.
    sets = select_tokens(waad, fai, mask, CreditConfig(k=1))
    assert positions(sets["dominated"][0]) == [4, 6, 10]
    assert positions(sets["intro"][0]) == [3, 5, 9]


# ---------------------------------------------------------------------------------------------
# waad_deltas
# ---------------------------------------------------------------------------------------------
def test_waad_deltas_last_token_and_one_token_response():
    # Row 0: R = 1..3, WAAD 2, 5, 4 → Δ = |2−5| = 3, |5−4| = 1, 0 (last).
    # Row 1: a 1-token response at t = 2 → Δ = 0 everywhere.
    waad = torch.tensor([[0.0, 2, 5, 4, 0], [0, 0, 7, 0, 0]])  # [2, 5]
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)  # [2, 5]
    delta = waad_deltas(waad, mask)
    assert delta.tolist() == [[0, 3, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert delta.dtype == torch.float32


def test_waad_deltas_response_to_the_last_column():
    # R = 2..4 ends at the last column: Δ = |1−3| = 2, |3−6| = 3, 0.
    waad = torch.tensor([[9.0, 9, 1, 3, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1]], dtype=torch.bool)
    assert waad_deltas(waad, mask).tolist() == [[0, 0, 2, 3, 0]]


def test_waad_deltas_rejects_non_bool_mask_and_shape_mismatch():
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        waad_deltas(torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="waad must be a tensor of the mask's shape"):
        waad_deltas(torch.zeros(1, 4), torch.ones(1, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# top_q
# ---------------------------------------------------------------------------------------------
def test_top_q_linear_interpolation():
    # R = 1..5, x = [1, 5, 3, 9, 7]; sorted [1,3,5,7,9], quantile 0.6 at rank 0.6·4 = 2.4
    # → 5 + 0.4·(7 − 5) = 5.8 → selected: 9 (t=4) and 7 (t=5). 100 in the prompt/padding is ignored.
    x = torch.tensor([[100.0, 1, 5, 3, 9, 7, 100]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    assert positions(top_q(x, mask, 0.4)[0]) == [4, 5]


def test_top_q_ties_at_the_threshold_are_all_selected():
    # x = [1..6], quantile 0.6 at rank 0.6·5 = 3 → exactly 4 → {4, 5, 6}: 3 of 6 tokens (50% > q).
    x = torch.tensor([[1.0, 2, 3, 4, 5, 6]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    assert positions(top_q(x, mask, 0.4)[0]) == [3, 4, 5]
    # x = [2, 2, 2, 1, 2]: sorted [1,2,2,2,2], rank 2.4 → 2 → all four 2s.
    x = torch.tensor([[2.0, 2, 2, 1, 2]])
    assert positions(top_q(x, torch.ones(1, 5, dtype=torch.bool), 0.4)[0]) == [0, 1, 2, 4]


def test_top_q_nan_at_the_end_and_rows_without_finite_values():
    # Row 0: R = 1..5 with FAI [3, 1, 4, nan, nan]; finite [3,1,4] sorted [1,3,4], rank 0.6·2 = 1.2
    #   → 3 + 0.2·(4 − 3) = 3.2 → only t=3 (FAI 4).
    # Row 1: every FAI on R is NaN → nothing.  Row 2: empty mask → nothing.
    # Row 3: +inf is not finite: finite [1, 2], rank 0.6 → 1.6 → t=2 (2) only, t=3 (inf) excluded.
    x = torch.tensor(
        [
            [NAN, 3, 1, 4, NAN, NAN],
            [NAN, NAN, NAN, NAN, NAN, NAN],
            [1, 2, 3, 4, 5, 6],
            [0, 1, 2, math.inf, 0, 0],
        ]
    )
    mask = torch.tensor(
        [[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool
    )
    sel = top_q(x, mask, 0.4)
    assert [positions(r) for r in sel] == [[3], [], [], [2]]


def test_top_q_one_token_response_selects_it():
    # quantile of a single value is the value itself, and x ≥ x: TopQ keeps the lone token.
    x = torch.tensor([[5.0, 0.25, 5.0]])
    mask = torch.tensor([[0, 1, 0]], dtype=torch.bool)
    assert positions(top_q(x, mask, 0.4)[0]) == [1]


def test_top_q_q_one_selects_every_finite_token_and_bad_q_raises():
    x = torch.tensor([[3.0, NAN, 1, 2]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert positions(top_q(x, mask, 1.0)[0]) == [0, 2, 3]
    for q in (0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="q="):
            top_q(x, mask, q)


def test_top_q_matches_torch_quantile_row_by_row():
    gen = torch.Generator().manual_seed(1)
    B, T = 16, 37
    x = torch.randn(B, T, generator=gen)  # [B, T]
    x[torch.rand(B, T, generator=gen) < 0.1] = NAN
    x[3] = NAN  # a row without finite values
    x[5, :10] = 0.5  # ties
    start = torch.randint(0, 10, (B, 1), generator=gen)
    length = torch.randint(0, 27, (B, 1), generator=gen)
    pos = torch.arange(T)
    mask = (pos >= start) & (pos < start + length)  # [B, T] padded on both sides
    for q in (0.1, 0.4, 0.75, 1.0):
        sel = top_q(x, mask, q)
        for b in range(B):
            ok = mask[b] & torch.isfinite(x[b])
            expected = torch.zeros(T, dtype=torch.bool)
            if ok.any():
                thr = torch.quantile(x[b][ok], 1 - q)  # the spec's definition, one row at a time
                expected = ok & (x[b] >= thr)
            assert torch.equal(sel[b], expected), (q, b)


def test_top_q_selected_fraction_is_about_q():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(64, 500, generator=gen)
    mask = torch.zeros(64, 500, dtype=torch.bool)
    mask[:, 50:450] = True  # 400 response tokens per row
    for q in (0.2, 0.4, 0.7):
        frac = top_q(x, mask, q)[mask].float().mean().item()
        assert abs(frac - q) < 0.01, (q, frac)


# ---------------------------------------------------------------------------------------------
# dominated anchors and intro tokens
# ---------------------------------------------------------------------------------------------
def test_equal_deltas_ramp_intro_ties_go_to_the_latest():
    # R = 1..5 with WAAD ramp 1,2,3,4,5 → Δ = [1,1,1,1,0] (all equal but the last).
    # Δ quantile 0.6 over [0,1,1,1,1] (rank 2.4) = 1; WAAD median = 3.
    # Anchors given: every response token. Dominated: WAAD ≤ 3 and a window max ≥ 1:
    #   t=1 (WAAD 1): empty window → no;  t=2 (WAAD 2): window {1}, Δ 1 → yes, intro 1;
    #   t=3 (WAAD 3): window {1,2}, Δ 1,1 → yes, intro = latest = 2;  t=4,5: WAAD > 3 → no.
    waad = torch.tensor([[0.0, 1, 2, 3, 4, 5, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    delta = waad_deltas(waad, mask)
    assert delta.tolist() == [[0, 1, 1, 1, 1, 0, 0]]
    dominated = dominated_anchors(waad, delta, mask.clone(), mask, k=3)
    assert positions(dominated[0]) == [2, 3]
    assert positions(intro_tokens(delta, dominated, mask, k=3)[0]) == [1, 2]


def test_constant_waad_all_deltas_zero_empty_window_never_dominated():
    # WAAD constant 4 on R = 2..6 → Δ = 0 everywhere, both thresholds are 4 and 0, so every anchor
    # with a non-empty window is dominated (0 ≥ 0); the first response token t=2 has an empty
    # window and is not. intro(t) for t = 3..6: all Δ tie at 0 → latest u = t − 1 → {2,3,4,5}.
    waad = torch.tensor([[7.0, 7, 4, 4, 4, 4, 4, 7]])  # junk 7 in prompt and padding
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    delta = waad_deltas(waad, mask)
    assert delta.abs().sum() == 0
    dominated = dominated_anchors(waad, delta, mask.clone(), mask, k=3)
    assert positions(dominated[0]) == [3, 4, 5, 6]
    assert positions(intro_tokens(delta, dominated, mask, k=3)[0]) == [2, 3, 4, 5]


def test_even_count_median_and_waad_quantile_option():
    # R = 0..3, WAAD [1, 5, 2, 6]: sorted [1,2,5,6], median = 2 + 0.5·(5 − 2) = 3.5.
    # Δ = [4, 3, 4, 0]; quantile 0.6 of sorted [0,3,4,4] at rank 1.8 → 3 + 0.8·(4 − 3) = 3.8.
    # Anchor t=2: WAAD 2 ≤ 3.5 and window {0,1} max Δ 4 ≥ 3.8 → dominated (intro 0).
    # Anchor t=3: WAAD 6 > 3.5 → not dominated.
    waad = torch.tensor([[1.0, 5, 2, 6]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    delta = waad_deltas(waad, mask)
    assert delta.tolist() == [[4, 3, 4, 0]]
    anchor = torch.tensor([[False, False, True, True]])
    dominated = dominated_anchors(waad, delta, anchor, mask)
    assert positions(dominated[0]) == [2]
    assert positions(intro_tokens(delta, dominated, mask)[0]) == [0]
    # waad_quantile = 0 (the minimum, 1): WAAD 2 > 1 → nothing dominated.
    assert positions(dominated_anchors(waad, delta, anchor, mask, waad_quantile=0.0)[0]) == []
    # delta_quantile = 1 (the maximum, 4): t=2's window max 4 ≥ 4 → still dominated.
    assert positions(dominated_anchors(waad, delta, anchor, mask, delta_quantile=1.0)[0]) == [2]


def test_window_does_not_reach_into_the_prompt_or_another_row():
    # Row 0: prompt {0,1} with wildly varying junk WAAD, R = 2..4 WAAD [1, 1, 1] → Δ = 0 on R and
    # the first response token t=2 has an empty window: with every Δ 0 the threshold is 0, so
    # t=3 (window {2}) and t=4 (window {2,3}) are dominated, t=2 is not.
    waad = torch.tensor([[50.0, 0, 1, 1, 1]])
    mask = torch.tensor([[0, 0, 1, 1, 1]], dtype=torch.bool)
    delta = waad_deltas(waad, mask)
    anchor = mask.clone()
    assert positions(dominated_anchors(waad, delta, anchor, mask)[0]) == [3, 4]


def test_dominated_and_intro_validate_arguments():
    waad, fai, mask = main_row()
    delta = waad_deltas(waad, mask)
    with pytest.raises(ValueError, match="k=0"):
        dominated_anchors(waad, delta, mask, mask, k=0)
    with pytest.raises(ValueError, match="k=2.5"):
        intro_tokens(delta, mask, mask, k=2.5)
    with pytest.raises(ValueError, match="anchor must be a bool tensor"):
        dominated_anchors(waad, delta, mask.float(), mask)
    with pytest.raises(ValueError, match="dominated must be a bool tensor"):
        intro_tokens(delta, mask.long(), mask)


def test_rows_are_independent():
    # The main row batched with a ramp row (and a fully padded row) gives the same sets per row
    # as each row alone: the thresholds are per row.
    waad0, fai0, mask0 = main_row()
    waad1 = torch.tensor([[0.0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0]])
    fai1 = torch.tensor([[NAN, NAN, 0.5, 0.9, 0.1, 0.7, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN]])
    mask1 = torch.zeros(1, 14, dtype=torch.bool)
    mask1[0, 2:7] = True
    waad = torch.cat([waad0, waad1, torch.zeros(1, 14)])
    fai = torch.cat([fai0, fai1, torch.full((1, 14), NAN)])
    mask = torch.cat([mask0, mask1, torch.zeros(1, 14, dtype=torch.bool)])
    batched = select_tokens(waad, fai, mask)
    alone = [select_tokens(waad0, fai0, mask0), select_tokens(waad1, fai1, mask1)]
    for key in SELECTION_KEYS:
        assert torch.equal(batched[key][0], alone[0][key][0]), key
        assert torch.equal(batched[key][1], alone[1][key][0]), key
        assert not batched[key][2].any(), key
    # Hand check of row 1: FAI finite [0.5, 0.9, 0.1, 0.7] → quantile 0.6 at rank 1.8 of
    # [0.1,0.5,0.7,0.9] → 0.5 + 0.8·0.2 = 0.66 → anchors t=3 (0.9), t=5 (0.7).
    assert positions(batched["anchor"][1]) == [3, 5]


def test_select_tokens_preplan_equals_top_q_on_random_inputs():
    gen = torch.Generator().manual_seed(3)
    B, T = 32, 300
    waad = torch.rand(B, T, generator=gen) * 10
    fai = torch.rand(B, T, generator=gen)
    start = torch.randint(0, 40, (B, 1), generator=gen)
    length = torch.randint(1, 250, (B, 1), generator=gen)
    pos = torch.arange(T)
    mask = (pos >= start) & (pos < start + length)
    fai = torch.where(mask & (pos < start + length - 10), fai, NAN)
    config = CreditConfig()
    sets = select_tokens(waad, fai, mask, config)
    delta = waad_deltas(waad, mask)
    assert torch.equal(sets["preplan"], top_q(delta, mask, config.quantile))
    assert torch.equal(sets["anchor"], top_q(fai, mask, config.quantile))
    dominated = dominated_anchors(waad, delta, sets["anchor"], mask, k=config.k)
    assert torch.equal(sets["dominated"], dominated)
    assert torch.equal(sets["intro"], intro_tokens(delta, dominated, mask, k=config.k))
    assert sets["dominated"].any() and sets["intro"].any()  # the random case is not vacuous
    assert not (sets["dominated"] & ~sets["anchor"]).any()


def test_amplify():
    sel = torch.tensor([[True, False]])
    out = amplify(sel, 1.5)
    assert out.dtype == torch.float32 and out.tolist() == [[1.5, 1.0]]


# ---------------------------------------------------------------------------------------------
# dtype independence and bottom selection
# ---------------------------------------------------------------------------------------------
def test_selection_does_not_depend_on_the_input_dtype_at_51_tokens():
    # Values 0..50 in a shuffled order. quantile(0.6) over 51 values sits exactly on rank 30, i.e.
    # on the value 30, so TopQ(0.4) = {30, ..., 50}: 21 tokens. In float32 torch.quantile puts the
    # rank at 30.0000019 and would drop the token holding 30.
    values = torch.randperm(51, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 51, dtype=torch.bool)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = values.to(dtype)[None]  # [1, 51]
        chosen = top_q(x, mask, 0.4)[0]
        assert sorted(values[chosen].tolist()) == list(range(30, 51)), dtype
    fai = values.float()[None]
    waad = values.float()[None].cumsum(1) % 7
    for key, a, b in [(k, v32, v64) for k, v32, v64 in zip(
            SELECTION_KEYS, select_tokens(waad, fai, mask).values(), select_tokens(waad.double(), fai.double(), mask).values())]:
        assert torch.equal(a, b), key


def test_bottom_q_selects_the_low_band_and_mirrors_top_q():
    # R = columns 1..5 with x = 5, 1, 4, 2, 3 (column 0 is prompt, 6 padding).
    # quantile(x, 0.4) over {1,2,3,4,5}: rank 0.4·4 = 1.6 → 2 + 0.6·(3 − 2) = 2.6 → {1, 2} at columns 2, 4.
    # TopQ(0.4): quantile(0.6) = 3.4 → {4, 5} at columns 1, 3.
    x = torch.tensor([[9.0, 5, 1, 4, 2, 3, -9]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    assert positions(bottom_q(x, mask, 0.4)[0]) == [2, 4]
    assert positions(select_q(x, mask, 0.4, "bottom")[0]) == [2, 4]
    assert positions(select_q(x, mask, 0.4, "top")[0]) == [1, 3]
    # the bottom band of x is the top band of −x
    assert torch.equal(bottom_q(x, mask, 0.4), top_q(-x, mask, 0.4))
    with pytest.raises(ValueError, match="select='middle'"):
        select_q(x, mask, 0.4, "middle")


def test_select_tokens_bottom_takes_the_low_end_of_fai_and_delta():
    # Same row as above as FAI; WAAD 0, 2, 7, 3, 3, 10 on R gives Δ = 5, 4, 0, 7, 0 (last) on 1..5.
    fai = torch.tensor([[NAN, 5, 1, 4, 2, 3, NAN]])
    waad = torch.tensor([[0.0, 2, 7, 3, 3, 10, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    top = select_tokens(waad, fai, mask, CreditConfig())
    bottom = select_tokens(waad, fai, mask, CreditConfig(select="bottom"))
    assert positions(top["anchor"][0]) == [1, 3] and positions(bottom["anchor"][0]) == [2, 4]
    # Δ over R = 5, 4, 0, 7, 0: quantile(0.6) = 4.4 → top {5, 7} at 1, 4; quantile(0.4) = 0.8 → bottom {0, 0} at 3, 5
    assert positions(top["preplan"][0]) == [1, 4]
    assert positions(bottom["preplan"][0]) == [3, 5]
    with pytest.raises(ValueError, match="CreditConfig.select='middle'"):
        CreditConfig(select="middle")
