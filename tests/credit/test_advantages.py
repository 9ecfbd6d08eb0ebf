"""apply_credit: token advantages Ã = γ·A with the sign option (docs/credit.md)."""

from __future__ import annotations

import pytest
import torch

from rlattn.credit.advantages import apply_credit

# Three sequences, A = [2, −1, 0], and hand-picked γ [B=3, T=3].
A = torch.tensor([2.0, -1.0, 0.0])
GAMMA = torch.tensor([[1.0, 1.5, 1.0], [1.5, 1.0, 1.25], [1.5, 1.5, 1.0]])


def test_both_scales_every_sequence():
    # row 0: 2·[1, 1.5, 1] = [2, 3, 2]; row 1: −1·[1.5, 1, 1.25] = [−1.5, −1, −1.25]; row 2: 0.
    out = apply_credit(A, GAMMA)
    assert out.dtype == torch.float32 and out.shape == (3, 3)
    assert out.tolist() == [[2, 3, 2], [-1.5, -1, -1.25], [0, 0, 0]]


def test_positive_leaves_negative_advantages_unchanged():
    # row 0 (A = 2 ≥ 0) scaled; row 1 (A = −1) keeps −1 on every token; row 2 (A = 0) is 0.
    out = apply_credit(A, GAMMA, sign="positive")
    assert out.tolist() == [[2, 3, 2], [-1, -1, -1], [0, 0, 0]]


def test_negative_leaves_non_negative_advantages_unchanged():
    out = apply_credit(A, GAMMA, sign="negative")
    assert out.tolist() == [[2, 2, 2], [-1.5, -1, -1.25], [0, 0, 0]]


@pytest.mark.parametrize("sign", ["both", "positive", "negative"])
def test_uniform_gamma_is_the_broadcast_advantage_exactly(sign):
    gen = torch.Generator().manual_seed(0)
    adv = torch.randn(64, generator=gen)
    out = apply_credit(adv, torch.ones(64, 100), sign=sign)
    assert torch.equal(out, adv[:, None].expand(64, 100))


def test_sign_positive_on_random_inputs():
    gen = torch.Generator().manual_seed(1)
    adv = torch.randn(32, generator=gen)
    gamma = 1 + torch.rand(32, 50, generator=gen)
    out = apply_credit(adv, gamma, sign="positive")
    neg = adv < 0
    assert torch.equal(out[neg], adv[neg][:, None].expand(-1, 50))
    assert torch.equal(out[~neg], adv[~neg][:, None] * gamma[~neg])


def test_gamma_is_detached_and_dtypes():
    gamma = GAMMA.clone().requires_grad_(True)
    assert not apply_credit(A, gamma).requires_grad
    assert apply_credit(A.double(), GAMMA).dtype == torch.float64
    assert apply_credit(A.half(), GAMMA.half()).dtype == torch.float32


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sign='up' is not one of 'both', 'positive', 'negative'"):
        apply_credit(A, GAMMA, sign="up")
    with pytest.raises(ValueError, match=r"advantages must be a 1-D tensor \[B\], got \(3, 1\)"):
        apply_credit(A[:, None], GAMMA)
    with pytest.raises(ValueError, match=r"gamma must be a tensor \[B, T\] with B = 2"):
        apply_credit(A[:2], GAMMA)
    with pytest.raises(ValueError, match=r"gamma must be a tensor \[B, T\]"):
        apply_credit(A, GAMMA[0])
