"""credit_report: per-batch γ and token-set statistics for the trainer's logs."""

from __future__ import annotations

import math

import pytest
import torch

from rlattn.credit.registry import CreditConfig, get_credit_fn
from rlattn.credit.report import GAMMA_BIN_LABELS, CreditReport, credit_report
from rlattn.credit.selection import select_tokens

NAN = math.nan


def test_hand_built_report():
    # Two rows, R = 5 tokens in all (row 0: t 1..3, row 1: t 0..1). Outside R γ is junk (9, 0.1)
    # and must not count.
    #   γ on R: 1, 1.5, 1.75 | 1.25, 1  → mean = 6.5 / 5 = 1.3, min 1, max 1.75
    #   bins: [1,1.25): 1, 1 → 2/5; [1.25,1.5): 1.25 → 1/5; [1.5,1.75): 1.5 → 1/5; ≥1.75 → 1/5
    #   amplified (γ > 1): 3/5
    #   anchor: row 0 t=2, t=3 and row 1 t=2 (outside R, ignored) → 2/5; intro: row 1 t=0 → 1/5
    gamma = torch.tensor([[9.0, 1, 1.5, 1.75], [1.25, 1, 0.1, 9]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    anchor = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)
    intro = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    report = credit_report(gamma, mask, anchor=anchor, intro=intro)
    assert isinstance(report, CreditReport)
    assert report.num_sequences == 2 and report.num_response_tokens == 5
    assert report.gamma_mean == pytest.approx(1.3)
    assert (report.gamma_min, report.gamma_max) == (1.0, 1.75)
    assert report.amplified_frac == pytest.approx(0.6)
    assert report.gamma_hist == pytest.approx(
        {"lt_1.00": 0.0, "1.00_1.25": 0.4, "1.25_1.50": 0.2, "1.50_1.75": 0.2, "ge_1.75": 0.2}
    )
    assert report.anchor_frac == pytest.approx(0.4) and report.intro_frac == pytest.approx(0.2)
    assert report.preplan_frac is None and report.dominated_frac is None

    metrics = report.to_metrics()
    assert metrics == pytest.approx(
        {
            "credit/num_response_tokens": 5.0,
            "credit/gamma_mean": 1.3,
            "credit/gamma_min": 1.0,
            "credit/gamma_max": 1.75,
            "credit/amplified_frac": 0.6,
            "credit/anchor_frac": 0.4,
            "credit/intro_frac": 0.2,
            "credit/gamma_hist/lt_1.00": 0.0,
            "credit/gamma_hist/1.00_1.25": 0.4,
            "credit/gamma_hist/1.25_1.50": 0.2,
            "credit/gamma_hist/1.50_1.75": 0.2,
            "credit/gamma_hist/ge_1.75": 0.2,
        }
    )
    assert all(type(v) is float for v in metrics.values())
    assert set(report.to_metrics(prefix="train/credit/")) == {"train/" + k for k in metrics}


def test_gamma_below_one_goes_to_the_first_bin():
    gamma = torch.tensor([[0.5, 1.0, 2.0]])
    report = credit_report(gamma, torch.ones(1, 3, dtype=torch.bool))
    assert report.gamma_hist == pytest.approx(
        {"lt_1.00": 1 / 3, "1.00_1.25": 1 / 3, "1.25_1.50": 0.0, "1.50_1.75": 0.0, "ge_1.75": 1 / 3}
    )
    assert tuple(report.gamma_hist) == GAMMA_BIN_LABELS


def test_coupled_main_row_report():
    # The main hand-built row of test_selection.py / test_strategies.py (R = 2..12, 11 tokens):
    # T_loc = {3,5,7,9,10} (5), T_glob = {2,3,4,6,7,8,10} (7), D = {4,6,7,10} (4), I(D) = {3,5,7} (3).
    # coupled γ on R (t = 2..12): 1.5, 1.75, 1.25, 1.25, 1.25, 1.5, 1.5, 1, 1.25, 1, 1
    #   sum = 14.25 → mean 14.25 / 11; γ = 1: 3 tokens; 1.25: 4; 1.5: 3; 1.75: 1; amplified 8.
    waad = torch.tensor([[0.0, 9, 1, 1, 4, 4, 1, 1, 8, 8, 2, 6, 6, 0]])
    fai = torch.tensor([[NAN, 5, 1, 1, 1, 0, 1, 1, 1, 0, 1, NAN, NAN, NAN]])
    mask = torch.zeros(1, 14, dtype=torch.bool)
    mask[0, 2:13] = True
    config = CreditConfig()
    gamma = get_credit_fn("coupled")(waad, fai, mask, config=config)
    report = credit_report(gamma, mask, **select_tokens(waad, fai, mask, config))
    assert report.num_response_tokens == 11
    assert report.preplan_frac == pytest.approx(5 / 11)
    assert report.anchor_frac == pytest.approx(7 / 11)
    assert report.dominated_frac == pytest.approx(4 / 11)
    assert report.intro_frac == pytest.approx(3 / 11)
    assert report.gamma_mean == pytest.approx(14.25 / 11)
    assert report.amplified_frac == pytest.approx(8 / 11)
    assert report.gamma_hist == pytest.approx(
        {"lt_1.00": 0.0, "1.00_1.25": 3 / 11, "1.25_1.50": 4 / 11, "1.50_1.75": 3 / 11, "ge_1.75": 1 / 11}
    )


def test_uniform_report():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    z = torch.zeros(2, 3)
    report = credit_report(get_credit_fn("uniform")(z, z, mask), mask)
    assert (report.gamma_mean, report.amplified_frac) == (1.0, 0.0)
    assert report.gamma_hist["1.00_1.25"] == 1.0


def test_no_response_tokens_gives_nan():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    report = credit_report(torch.ones(2, 3), mask, anchor=mask)
    assert report.num_response_tokens == 0
    assert math.isnan(report.gamma_mean) and math.isnan(report.anchor_frac)
    assert report.preplan_frac is None
    metrics = report.to_metrics()
    assert metrics["credit/num_response_tokens"] == 0.0 and math.isnan(metrics["credit/gamma_mean"])


def test_bad_arguments_raise():
    mask = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        credit_report(torch.ones(1, 3), mask.long())
    with pytest.raises(ValueError, match=r"gamma must be a tensor of the mask's shape \(1, 3\)"):
        credit_report(torch.ones(1, 4), mask)
    with pytest.raises(ValueError, match="anchor must be a bool tensor"):
        credit_report(torch.ones(1, 3), mask, anchor=torch.ones(1, 3))
