"""GAE, returns and whitening against hand-computed examples (ragged masks, λ = 0 and 1)."""

import pytest
import torch

from rlattn.credit import apply_credit
from rlattn.ppo import gae, masked_whiten, token_rewards

# two rows: lengths 3 and 2 (right padding), sequence rewards 1.0 and -1.0
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
VALUES = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.0]])  # 9.0 sits on padding and must be ignored
REWARDS = torch.tensor([1.0, -1.0])


def test_token_rewards_put_the_reward_on_the_last_token_and_kl_everywhere():
    r = token_rewards(REWARDS, MASK)
    assert r.tolist() == [[0, 0, 1.0], [0, -1.0, 0]]
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    r = token_rewards(REWARDS, MASK, kl, kl_coef=0.5)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, 0.85], [-0.2, -1.25, 0.0]]))


def test_gae_by_hand():
    # γ = 1, λ = 0.5. Row 0: δ = r + V_next − V with V_next = (0.2, 0.1, 0):
    #   δ0 = 0 + 0.2 − 0.5 = −0.3, δ1 = 0 + 0.1 − 0.2 = −0.1, δ2 = 1 + 0 − 0.1 = 0.9
    #   A2 = 0.9, A1 = −0.1 + 0.5·0.9 = 0.35, A0 = −0.3 + 0.5·0.35 = −0.125
    # Row 1 (length 2): δ0 = 0 + 0.4 − 0.3 = 0.1, δ1 = −1 + 0 − 0.4 = −1.4
    #   A1 = −1.4, A0 = 0.1 + 0.5·(−1.4) = −0.6
    adv, ret = gae(token_rewards(REWARDS, MASK), VALUES, MASK, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.125, 0.35, 0.9], [-0.6, -1.4, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.375, 0.55, 1.0], [-0.3, -1.0, 0.0]]))


def test_lambda_one_is_monte_carlo_and_lambda_zero_is_td():
    r = token_rewards(REWARDS, MASK)
    adv, ret = gae(r, VALUES, MASK, gamma=0.9, lam=1.0)
    # λ = 1: G_t = Σ γ^k r_{t+k} (independent of V), A = G − V
    expected_ret = torch.tensor([[0.81, 0.9, 1.0], [-0.9, -1.0, 0.0]])
    torch.testing.assert_close(ret, expected_ret)
    torch.testing.assert_close(adv, (expected_ret - VALUES) * MASK)
    adv, _ = gae(r, VALUES, MASK, gamma=0.9, lam=0.0)
    # λ = 0: A_t = δ_t = r_t + γ V_{t+1} − V_t (V beyond the last token is 0)
    torch.testing.assert_close(adv, torch.tensor([[-0.5 + 0.9 * 0.2, -0.2 + 0.9 * 0.1, 0.9],
                                                  [-0.3 + 0.9 * 0.4, -1.4, 0.0]]))


def test_gae_checks_its_arguments():
    with pytest.raises(ValueError, match="lam=1.5"):
        gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), lam=1.5)


def test_whitening_over_valid_tokens_only():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    w = masked_whiten(x, MASK)
    vals = torch.tensor([1.0, 2, 3, 4, 5])
    expected = (vals - 3.0) / vals.std(unbiased=False)
    torch.testing.assert_close(w[MASK], expected, atol=1e-6, rtol=0)
    assert w[1, 2] == 0


def test_credit_on_token_advantages_is_elementwise_with_a_per_token_sign():
    adv = torch.tensor([[1.0, -2.0], [0.5, -0.5]])
    gamma = torch.tensor([[1.5, 1.5], [1.0, 1.75]])
    assert apply_credit(adv, gamma).tolist() == [[1.5, -3.0], [0.5, -0.875]]
    assert apply_credit(adv, gamma, sign="positive").tolist() == [[1.5, -2.0], [0.5, -0.5]]
    assert apply_credit(adv, gamma, sign="negative").tolist() == [[1.0, -3.0], [0.5, -0.875]]
