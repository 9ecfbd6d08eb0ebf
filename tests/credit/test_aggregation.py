"""attention_rows / sink_mask / drop_columns against a naive softmax and hand-computed masks,
and nested captures (the innermost capture owns a pass: outer captures ignore a model's internal passes)."""

import math

import pytest
import torch

from rlattn.credit.aggregation import attention_rows, drop_columns, sink_mask
from rlattn.credit.capture import capture_qk, run_captured
from rlattn.testing import tiny_model


def test_attention_rows_equals_a_naive_softmax_with_gqa_and_padding():
    torch.manual_seed(0)
    B, H, KV, N, D = 2, 4, 2, 6, 8
    q, k = torch.randn(B, H, N, D), torch.randn(B, KV, N, D)
    key_mask = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    rows = torch.tensor([2, 5])
    got = attention_rows(q, k, 0.3, key_mask, rows)  # [B, R, N]
    want = torch.zeros(B, 2, N)
    for b in range(B):
        for r, t in enumerate(rows.tolist()):
            acc = torch.zeros(N)
            for h in range(H):
                kh = k[b, h // (H // KV)]
                s = [(q[b, h, t] @ kh[j]).item() * 0.3 if (j <= t and key_mask[b, j]) else -math.inf for j in range(N)]
                acc += torch.softmax(torch.tensor(s), 0)
            want[b, r] = acc / H
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(B, 2), atol=1e-6)


def test_sink_mask_and_drop_columns_by_hand():
    key_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]).bool()
    assert sink_mask(key_mask, 1).int().tolist() == [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert sink_mask(key_mask, 2).int().tolist() == [[0, 0, 1, 1, 0], [1, 1, 0, 0, 0]]
    assert not sink_mask(key_mask, 0).any()
    with pytest.raises(ValueError, match="num_sinks=-1"):
        sink_mask(key_mask, -1)
    w = torch.tensor([[[0.0, 0.0, 0.5, 0.25, 0.25]]])
    assert drop_columns(w, sink_mask(key_mask[:1], 1)).tolist() == [[[0.0, 0.0, 0.0, 0.5, 0.5]]]
    assert drop_columns(w, sink_mask(key_mask[:1], 1), renormalise=False).tolist() == [[[0.0, 0.0, 0.0, 0.25, 0.25]]]


def test_inner_captures_hide_inner_passes_from_outer_captures():
    model, tok = tiny_model("llama", num_layers=2)
    ids = torch.tensor([[5, 6, 7, 8]])
    outer, inner = [], []
    with capture_qk(model, [0, 1], lambda l, q, k, s: outer.append(l), stop_after_last=False):
        with capture_qk(model, [1], lambda l, q, k, s: inner.append(l), stop_after_last=False):
            model(ids)  # an internal pass: only the innermost capture sees it (layer 0 goes to neither)
        model(ids)  # the main pass
    assert inner == [1] and outer == [0, 1]
    seen = []
    run_captured(model, [0], lambda l, q, k, s: seen.append(l), input_ids=ids)  # nothing left paused
    assert seen == [0]
    assert outer == [0, 1]  # the outer capture was restored intact
