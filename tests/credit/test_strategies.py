"""The built-in credit strategies (docs/credit.md) on hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rlattn.credit.coupled import coupled
from rlattn.credit.global_anchor import global_anchor
from rlattn.credit.high_entropy import high_entropy
from rlattn.credit.local_chunk import local_chunk
from rlattn.credit.random_tokens import random_tokens
from rlattn.credit.uniform import uniform
from rlattn.credit.registry import CreditConfig, get_credit_fn
from rlattn.credit.selection import select_tokens

NAN = math.nan
BUILTINS = ("uniform", "local_chunk", "global_anchor", "coupled", "random", "high_entropy")


# The main hand-built row of test_selection.py (T = 14): left pad {0}, prompt {1}, R = 2..12,
# right pad {13}.
#   t      :  0  1   2  3  4  5  6  7  8  9  10  11  12  13
#   WAAD   :  0  9   1  1  4  4  1  1  8  8   2   6   6   0
#   Δ (R)  :  .  .   0  3  0  3  0  7  0  6   4   0   0   .
#   FAI    : nan 5   1  1  1  0  1  1  1  0   1 nan nan nan
# T_loc = {3,5,7,9,10}, T_glob = {2,3,4,6,7,8,10}, D = {4,6,7,10}, I(D) = {3,5,7}
# (worked out in test_selection.py).
def main_row():
    waad = torch.tensor([[0.0, 9, 1, 1, 4, 4, 1, 1, 8, 8, 2, 6, 6, 0]])  # [1, 14]
    fai = torch.tensor([[NAN, 5, 1, 1, 1, 0, 1, 1, 1, 0, 1, NAN, NAN, NAN]])  # [1, 14]
    mask = torch.zeros(1, 14, dtype=torch.bool)  # [1, 14]
    mask[0, 2:13] = True
    return waad, fai, mask


def gamma_at(values: dict[int, float], T: int = 14) -> list[float]:
    """Expected row: 1 everywhere except the given positions."""
    return [values.get(t, 1.0) for t in range(T)]


def random_batch(seed: int, B: int = 24, T: int = 200):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.arange(T)
    start = torch.randint(0, 30, (B, 1), generator=gen)
    length = torch.randint(1, 160, (B, 1), generator=gen)
    mask = (pos >= start) & (pos < start + length)  # [B, T] padded on both sides
    waad = torch.where(mask, torch.rand(B, T, generator=gen) * 10, 0.0)  # [B, T]
    fai = torch.where(mask & (pos < start + length - 10), torch.rand(B, T, generator=gen), NAN)  # [B, T]
    entropies = torch.rand(B, T, generator=gen) * 4  # [B, T]
    return waad, fai, mask, entropies


# ---------------------------------------------------------------------------------------------
# uniform
# ---------------------------------------------------------------------------------------------
def test_uniform_is_exactly_one():
    waad, fai, mask = main_row()
    gamma = uniform(waad, fai, mask, config=CreditConfig())
    assert gamma.dtype == torch.float32
    assert torch.equal(gamma, torch.ones(1, 14))


# ---------------------------------------------------------------------------------------------
# local_chunk
# ---------------------------------------------------------------------------------------------
def test_local_chunk_main_row():
    waad, fai, mask = main_row()
    # Δ ≥ quantile(Δ over R, 0.6) = 3 → T_loc = {3,5,7,9,10} → γ = 1.5 there.
    gamma = local_chunk(waad, fai, mask, config=CreditConfig())
    assert gamma.dtype == torch.float32
    assert gamma[0].tolist() == gamma_at({3: 1.5, 5: 1.5, 7: 1.5, 9: 1.5, 10: 1.5})
    # γ_amp = 2 → 2.0 on the same tokens.
    gamma = local_chunk(waad, fai, mask, config=CreditConfig(gamma=2.0))
    assert gamma[0].tolist() == gamma_at({3: 2.0, 5: 2.0, 7: 2.0, 9: 2.0, 10: 2.0})


def test_local_chunk_every_delta_equal_and_one_token_response():
    # Row 0: R = 1..5 with a WAAD ramp 1..5 → Δ = [1,1,1,1,0]: quantile 0.6 of [0,1,1,1,1] at rank
    #   2.4 = 1 → the four tied tokens t = 1..4 are selected, the last (Δ 0) is not.
    # Row 1: constant WAAD → Δ = 0 everywhere on R → quantile 0 → every response token (ties).
    # Row 2: a 1-token response at t=3: Δ = [0], its own quantile → selected.
    waad = torch.tensor([[0.0, 1, 2, 3, 4, 5, 0], [0, 0, 3, 3, 3, 0, 0], [0, 0, 0, 7, 0, 0, 0]])
    mask = torch.tensor(
        [[0, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0, 0]], dtype=torch.bool
    )
    fai = torch.full_like(waad, NAN)
    gamma = local_chunk(waad, fai, mask, config=CreditConfig())
    assert gamma.tolist() == [
        [1, 1.5, 1.5, 1.5, 1.5, 1, 1],
        [1, 1, 1.5, 1.5, 1.5, 1, 1],
        [1, 1, 1, 1.5, 1, 1, 1],
    ]


# ---------------------------------------------------------------------------------------------
# global_anchor
# ---------------------------------------------------------------------------------------------
def test_global_anchor_main_row_ties_and_nan_tail():
    waad, fai, mask = main_row()
    # finite FAI on R = [1,1,1,0,1,1,1,0,1] → threshold 1 → the seven 1s (ties); the NaN tail
    # (t = 11, 12) and the prompt's FAI 5 (t = 1) are never anchors.
    gamma = global_anchor(waad, fai, mask, config=CreditConfig())
    assert gamma[0].tolist() == gamma_at({t: 1.5 for t in (2, 3, 4, 6, 7, 8, 10)})


def test_global_anchor_distinct_values():
    # R = 1..6, FAI [0.2, 0.8, 0.4, 0.6, nan, nan]; finite sorted [0.2,0.4,0.6,0.8], rank 0.6·3 = 1.8
    # → 0.4 + 0.8·0.2 = 0.56 → t=2 (0.8) and t=4 (0.6).
    fai = torch.tensor([[9.0, 0.2, 0.8, 0.4, 0.6, NAN, NAN, 9.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    gamma = global_anchor(torch.zeros(1, 8), fai, mask, config=CreditConfig())
    assert gamma[0].tolist() == [1, 1, 1.5, 1, 1.5, 1, 1, 1]


# ---------------------------------------------------------------------------------------------
# coupled
# ---------------------------------------------------------------------------------------------
def test_coupled_sum_main_row():
    waad, fai, mask = main_row()
    # c = γ_amp − 1 = 0.5, α = 0.5: T_glob∖D → +0.5, D → +0.25, I(D) → +0.25, terms add.
    #   t=2  : T_glob∖D            → 1.5
    #   t=3  : T_glob∖D and I(D)   → 1 + 0.5 + 0.25 = 1.75 (the maximum)
    #   t=4  : D                   → 1.25
    #   t=5  : I(D) (intro of 6, 7, once: a set) → 1.25
    #   t=6  : D                   → 1.25
    #   t=7  : D and I(D)          → 1 + 0.25 + 0.25 = 1.5
    #   t=8  : T_glob∖D            → 1.5
    #   t=10 : D                   → 1.25
    #   others (and all padding / prompt) → 1
    gamma = coupled(waad, fai, mask, config=CreditConfig())
    expected = {2: 1.5, 3: 1.75, 4: 1.25, 5: 1.25, 6: 1.25, 7: 1.5, 8: 1.5, 10: 1.25}
    assert gamma.dtype == torch.float32
    assert gamma[0].tolist() == gamma_at(expected)


def test_coupled_max_main_row():
    waad, fai, mask = main_row()
    # combine=max: γ = 1 + the largest term: t=3 → max(0.5, 0.25) = 0.5 → 1.5; t=7 → max(0.25,
    # 0.25) → 1.25; the rest as with sum.
    gamma = coupled(waad, fai, mask, config=CreditConfig(combine="max"))
    expected = {2: 1.5, 3: 1.5, 4: 1.25, 5: 1.25, 6: 1.25, 7: 1.25, 8: 1.5, 10: 1.25}
    assert gamma[0].tolist() == gamma_at(expected)


def test_coupled_other_alpha_and_gamma():
    waad, fai, mask = main_row()
    # γ_amp = 2 (c = 1), α = 0.25: T_glob∖D +1, D +0.75, I(D) +0.25.
    #   t=2: 2, t=3: 1 + 1 + 0.25 = 2.25, t=4: 1.75, t=5: 1.25, t=6: 1.75, t=7: 1 + 0.75 + 0.25 = 2,
    #   t=8: 2, t=10: 1.75.
    gamma = coupled(waad, fai, mask, config=CreditConfig(gamma=2.0, alpha=0.25))
    expected = {2: 2.0, 3: 2.25, 4: 1.75, 5: 1.25, 6: 1.75, 7: 2.0, 8: 2.0, 10: 1.75}
    assert gamma[0].tolist() == gamma_at(expected)
    # α = 0: nothing moves to intro tokens; dominated anchors keep the full c → same as global_anchor.
    gamma = coupled(waad, fai, mask, config=CreditConfig(alpha=0.0))
    assert torch.equal(gamma, global_anchor(waad, fai, mask, config=CreditConfig()))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("amp", [1.0, 1.5, 3.0])
def test_coupled_moves_exactly_alpha_c_to_each_intro_token(alpha, amp):
    waad, fai, mask, _ = random_batch(seed=4)
    config = CreditConfig(gamma=amp, alpha=alpha)
    sets = select_tokens(waad, fai, mask, config)
    assert sets["intro"].any() and sets["dominated"].any()
    c = amp - 1
    gamma = coupled(waad, fai, mask, config=config)
    kept = (sets["anchor"] & ~sets["dominated"]).float()
    without_intro = 1 + c * kept + (1 - alpha) * c * sets["dominated"].float()
    moved = gamma - without_intro  # α·c on I(D), 0 elsewhere
    torch.testing.assert_close(moved, alpha * c * sets["intro"].float(), rtol=0, atol=1e-6)


def test_coupled_one_token_response_and_no_anchor():
    # A 1-token response has FAI NaN (empty horizon) → no anchor → γ = 1.
    waad = torch.tensor([[0.0, 0, 3, 0]])
    fai = torch.tensor([[NAN, 0.4, NAN, NAN]])
    mask = torch.tensor([[0, 0, 1, 0]], dtype=torch.bool)
    for strategy in (coupled, global_anchor):
        assert strategy(waad, fai, mask, config=CreditConfig()).tolist() == [[1, 1, 1, 1]]


# ---------------------------------------------------------------------------------------------
# high_entropy
# ---------------------------------------------------------------------------------------------
def test_high_entropy_hand_built():
    # R = 3..6, entropies [0.5, 2, 1, 3]; sorted [0.5,1,2,3], rank 0.6·3 = 1.8 → 1 + 0.8·1 = 1.8
    # → t=4 (2) and t=6 (3). Prompt entropy 10 (t=1) is ignored.
    entropies = torch.tensor([[0.0, 10, 10, 0.5, 2, 1, 3, 0]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    z = torch.zeros(1, 8)
    gamma = high_entropy(z, z, mask, entropies=entropies, config=CreditConfig())
    assert gamma.tolist() == [[1, 1, 1, 1, 1.5, 1, 1.5, 1]]


def test_high_entropy_needs_entropies():
    waad, fai, mask = main_row()
    with pytest.raises(ValueError, match="high_entropy.*entropies"):
        high_entropy(waad, fai, mask, config=CreditConfig())
    with pytest.raises(ValueError, match="high_entropy.*entropies"):
        get_credit_fn("high_entropy")(waad, fai, mask)


# ---------------------------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------------------------
def test_random_reproducible_per_seed_and_independent_of_global_rng():
    waad, fai, mask, _ = random_batch(seed=5)
    fn = get_credit_fn("random")
    torch.manual_seed(123)
    a = fn(waad, fai, mask, config=CreditConfig(seed=7))
    state = torch.get_rng_state()
    torch.manual_seed(999)
    b = fn(waad, fai, mask, config=CreditConfig(seed=7))
    assert torch.equal(a, b)
    torch.manual_seed(123)
    fn(waad, fai, mask, config=CreditConfig(seed=7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not advanced
    c = fn(waad, fai, mask, config=CreditConfig(seed=8))
    assert not torch.equal(a, c)
    assert set(a[mask].unique().tolist()) == {1.0, 1.5}
    assert (a[~mask] == 1).all()


def test_random_selected_fraction_is_about_q():
    B, T = 64, 400
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 20:370] = True
    z = torch.zeros(B, T)
    for q in (0.2, 0.4, 0.6):
        gamma = random_tokens(z, z, mask, config=CreditConfig(quantile=q, seed=3))
        frac = (gamma[mask] > 1).float().mean().item()
        assert abs(frac - q) < 0.01, (q, frac)
        assert (gamma[~mask] == 1).all()


# ---------------------------------------------------------------------------------------------
# All strategies
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize(
    "config",
    [
        CreditConfig(),
        CreditConfig(quantile=0.1, gamma=3.0, alpha=1.0, k=5, combine="max", seed=2),
        CreditConfig(quantile=1.0, k=1),
    ],
    ids=["default", "other", "q1"],
)
def test_gamma_at_least_one_float32_and_one_outside_r(name, config):
    waad, fai, mask, entropies = random_batch(seed=6)
    gamma = get_credit_fn(name)(waad, fai, mask, entropies=entropies, config=config)
    assert gamma.dtype == torch.float32 and gamma.shape == mask.shape
    assert (gamma[mask] >= 1).all()
    assert (gamma[mask] <= 1 + (1 + config.alpha) * (config.gamma - 1) + 1e-6).all()
    assert (gamma[~mask] == 1).all()
    if name == "uniform":
        assert (gamma == 1).all()
    else:
        assert (gamma[mask] > 1).any()


@pytest.mark.parametrize("name", BUILTINS)
def test_one_token_response_and_empty_rows(name):
    # Row 0: 1-token response (t=2) between a prompt and padding; row 1: no response at all.
    waad = torch.tensor([[0.0, 5, 4, 0], [0, 0, 0, 0]])
    fai = torch.tensor([[NAN, 0.3, NAN, NAN], [NAN, NAN, NAN, NAN]])
    entropies = torch.tensor([[1.0, 1, 2, 1], [1, 1, 1, 1]])
    mask = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    gamma = get_credit_fn(name)(waad, fai, mask, entropies=entropies)
    # TopQ of one finite value keeps it (local_chunk: Δ = 0; random: its noise; high_entropy: 2);
    # the anchor strategies have no finite FAI → 1; uniform → 1.
    lone = {
        "uniform": 1.0, "local_chunk": 1.5, "global_anchor": 1.0,
        "coupled": 1.0, "random": 1.5, "high_entropy": 1.5,
    }
    assert gamma.tolist() == [[1, 1, lone[name], 1], [1, 1, 1, 1]]


@pytest.mark.parametrize("name", BUILTINS)
def test_strategies_do_not_depend_on_the_prompt_or_padding(name):
    waad, fai, mask, entropies = random_batch(seed=7)
    config = CreditConfig()
    fn = get_credit_fn(name)
    base = fn(waad, fai, mask, entropies=entropies, config=config)
    junk = torch.rand(waad.shape, generator=torch.Generator().manual_seed(0)) * 100
    moved = fn(
        torch.where(mask, waad, junk), torch.where(mask, fai, junk), mask,
        entropies=torch.where(mask, entropies, junk), config=config,
    )
    assert torch.equal(base, moved)


def test_float64_inputs_give_float32():
    waad, fai, mask = main_row()
    gamma = get_credit_fn("coupled")(waad.double(), fai.double(), mask)
    assert gamma.dtype == torch.float32
    assert torch.equal(gamma, get_credit_fn("coupled")(waad, fai, mask))
