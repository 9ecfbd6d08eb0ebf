"""Exactness of the streaming attention statistics against a naive full-map reference.

The reference takes the eager model's ``output_attentions`` maps (all N×N, every head) and applies
docs/credit.md literally with Python loops. Tolerance: 1e-4 absolute, fp32.
"""

import math

import pytest
import torch

from rlattn.credit.attention_stats import (
    AttentionStatsConfig,
    compute_attention_stats,
    default_layers,
    horizon_counts,
)
from rlattn.testing import tiny_model

ATOL = 1e-4


def trl_batch(prompt_lens, resp_lens, vocab=250, seed=0):
    """TRL's layout: prompts left-padded to P, responses right-padded to T. Returns ids, attn, resp."""
    g = torch.Generator().manual_seed(seed)
    P, T = max(prompt_lens), max(resp_lens)
    B = len(prompt_lens)
    ids = torch.full((B, P + T), 257, dtype=torch.long)
    attn = torch.zeros(B, P + T, dtype=torch.long)
    resp = torch.zeros(B, P + T, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompt_lens, resp_lens)):
        ids[b, P - p : P + r] = torch.randint(0, vocab, (p + r,), generator=g)
        attn[b, P - p : P + r] = 1
        resp[b, P : P + r] = True
    return ids, attn, resp


@torch.no_grad()
def naive_stats(model, ids, attn, resp, cfg):
    out = model(input_ids=ids, attention_mask=attn, output_attentions=True, use_cache=False)
    L = model.config.num_hidden_layers
    layers = cfg.resolve_layers(L)
    maps = [out.attentions[l].double() for l in layers]  # each [B, H, N, N]
    B, N = ids.shape
    H = maps[0].shape[1]
    W, (h_lo, h_hi) = cfg.window, cfg.fai_horizon
    waad = torch.zeros(B, N, dtype=torch.float64)
    fai = torch.full((B, N), float("nan"), dtype=torch.float64)
    span = torch.zeros(B, len(layers), H, dtype=torch.float64)
    local = torch.zeros(B, len(layers), H, dtype=torch.bool)
    glob = torch.zeros(B, len(layers), H, dtype=torch.bool)
    for b in range(B):
        R = [t for t in range(N) if resp[b, t]]
        real = [s for s in range(N) if attn[b, s]]
        for i in range(len(layers)):
            for h in range(H):
                A = maps[i][b, h]
                span[b, i, h] = sum(sum(A[t, s] * (t - s) for s in real if s <= t) for t in R) / len(R)
        n = len(layers) * H
        k_loc = math.ceil(cfg.local_quantile * n - 1e-9)
        k_glob = math.ceil(cfg.global_quantile * n - 1e-9)
        heads = [(i, h) for i in range(len(layers)) for h in range(H)]
        by_small = sorted(heads, key=lambda ih: (float(span[b, ih[0], ih[1]]), ih))
        by_large = sorted(heads, key=lambda ih: (-float(span[b, ih[0], ih[1]]), ih))
        for ih in by_small[:k_loc]:
            local[b, ih[0], ih[1]] = True
        for ih in by_large[:k_glob]:
            glob[b, ih[0], ih[1]] = True
        A_loc = sum(maps[i][b, h] for i, h in by_small[:k_loc]) / k_loc
        A_glob = sum(maps[i][b, h] for i, h in by_large[:k_glob]) / k_glob
        for t in R:
            waad[b, t] = sum(A_loc[t, s] * min(t - s, W) for s in real if s <= t)
        for s in real:
            T = [t for t in R if s + h_lo <= t <= s + h_hi]
            if T:
                fai[b, s] = sum(A_glob[t, s] for t in T) / len(T)
    return waad, fai, span, local, glob


def assert_matches(stats, ref):
    waad, fai, span, local, glob = ref
    torch.testing.assert_close(stats.waad.double(), waad, atol=ATOL, rtol=0)
    assert torch.equal(torch.isnan(stats.fai), torch.isnan(fai)), "FAI NaN pattern differs"
    torch.testing.assert_close(stats.fai.double(), fai, atol=ATOL, rtol=0, equal_nan=True)
    torch.testing.assert_close(stats.head_span.double(), span, atol=ATOL, rtol=0)
    assert torch.equal(stats.local_heads, local)
    assert torch.equal(stats.global_heads, glob)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize(
    "cfg",
    [
        AttentionStatsConfig(window=4, fai_horizon=(2, 7)),
        AttentionStatsConfig(),  # default W=10, horizon (10, 100): longer than these responses
        AttentionStatsConfig(window=3, fai_horizon=(1, 5), chunk_size=3, local_quantile=0.5, global_quantile=0.25),
    ],
    ids=["short-horizon", "defaults", "chunked"],
)
def test_matches_naive_reference(arch, cfg):
    model, _ = tiny_model(arch, num_layers=4, num_heads=4, num_kv_heads=2, hidden_size=32, seed=1)
    ids, attn, resp = trl_batch([5, 9, 3], [14, 6, 1], seed=2)  # mixed lengths incl. a 1-token response
    stats = compute_attention_stats(model, ids, attn, resp, cfg)
    assert stats.waad.dtype == torch.float32 and stats.fai.dtype == torch.float32
    assert stats.head_span.shape == (3, len(stats.layers), 4)
    assert_matches(stats, naive_stats(model, ids, attn, resp, cfg))


def test_gqa_many_groups_and_explicit_layers():
    model, _ = tiny_model("llama", num_layers=3, num_heads=6, num_kv_heads=2, hidden_size=48, seed=3)
    cfg = AttentionStatsConfig(layers=[0, 2], window=5, fai_horizon=(3, 9))
    ids, attn, resp = trl_batch([4, 7], [20, 11], seed=5)
    stats = compute_attention_stats(model, ids, attn, resp, cfg)
    assert stats.layers == [0, 2]
    assert_matches(stats, naive_stats(model, ids, attn, resp, cfg))


def test_sdpa_model_and_peft_model_match_reference():
    peft = pytest.importorskip("peft")
    eager, _ = tiny_model("qwen3", num_layers=2, seed=4, attn_implementation="eager")
    sdpa, _ = tiny_model("qwen3", num_layers=2, seed=4, attn_implementation="sdpa")
    cfg = AttentionStatsConfig(window=4, fai_horizon=(2, 6))
    ids, attn, resp = trl_batch([6, 2], [9, 12], seed=7)
    ref = naive_stats(eager, ids, attn, resp, cfg)
    assert_matches(compute_attention_stats(sdpa, ids, attn, resp, cfg), ref)
    lora = peft.get_peft_model(sdpa, peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj"], init_lora_weights=False))
    eager_lora = peft.get_peft_model(eager, peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj"], init_lora_weights=False))
    eager_lora.load_state_dict(lora.state_dict())
    ref_lora = naive_stats(eager_lora.get_base_model(), ids, attn, resp, cfg)
    stats_lora = compute_attention_stats(lora, ids, attn, resp, cfg)
    assert_matches(stats_lora, ref_lora)
    assert not torch.allclose(stats_lora.head_span, ref[2].float()), "LoRA weights should change the statistics"


def test_bf16_model_gives_fp32_statistics_close_to_fp32_model():
    m32, _ = tiny_model("llama", num_layers=2, seed=5)
    m16, _ = tiny_model("llama", num_layers=2, seed=5, dtype=torch.bfloat16)
    ids, attn, resp = trl_batch([4, 6], [10, 8], seed=1)
    cfg = AttentionStatsConfig(window=4, fai_horizon=(2, 6))
    s32 = compute_attention_stats(m32, ids, attn, resp, cfg)
    s16 = compute_attention_stats(m16, ids, attn, resp, cfg)
    assert s16.waad.dtype == torch.float32 and s16.fai.dtype == torch.float32
    # bf16 q/k carry ~3 significant digits; the statistics stay close, not equal
    torch.testing.assert_close(s16.waad, s32.waad, atol=0.1, rtol=0)
    torch.testing.assert_close(s16.fai, s32.fai, atol=0.02, rtol=0, equal_nan=True)


def test_forward_stops_after_last_selected_layer():
    model, _ = tiny_model("llama", num_layers=6, seed=0)
    called = []
    hooks = [layer.register_forward_hook(lambda m, i, o, n=n: called.append(n)) for n, layer in enumerate(model.model.layers)]
    head_calls = []
    hooks.append(model.lm_head.register_forward_hook(lambda *a: head_calls.append(1)))
    ids, attn, resp = trl_batch([3], [5])
    compute_attention_stats(model, ids, attn, resp, AttentionStatsConfig(layers=[1, 2]))
    for h in hooks:
        h.remove()
    assert called == [0, 1], "layers after the last selected one (2) must not run; layer 2 stops inside attention"
    assert head_calls == []


def test_training_mode_and_registry_restored():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model, _ = tiny_model("llama", num_layers=2, attn_implementation="sdpa")
    model.train()
    before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    ids, attn, resp = trl_batch([3], [4])
    compute_attention_stats(model, ids, attn, resp)
    assert model.training
    assert ALL_ATTENTION_FUNCTIONS._local_mapping == before


def test_default_layers_follow_spec():
    assert default_layers(36) == [12, 15, 18, 21, 24]
    assert default_layers(30) == [10, 12, 15, 18, 20]
    assert default_layers(2) == [0, 1]


def test_horizon_counts_by_hand():
    # R = positions 2..6 of N=8; horizon (1, 2): |T(s)| = #{t in R: s+1 <= t <= s+2}
    resp = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    expected = torch.tensor([[1.0, 2.0, 2.0, 2.0, 2.0, 1.0, 0.0, 0.0]])
    assert torch.equal(horizon_counts(resp, 1, 2), expected)


def test_head_selection_batch_and_fixed():
    model, _ = tiny_model("llama", num_layers=2, seed=2)
    ids, attn, resp = trl_batch([4, 5], [8, 9], seed=3)
    s = compute_attention_stats(model, ids, attn, resp, AttentionStatsConfig(head_selection="batch", window=4, fai_horizon=(2, 5)))
    assert torch.equal(s.local_heads[0], s.local_heads[1])
    fixed = AttentionStatsConfig(
        head_selection="fixed", fixed_local_heads=[[0, 0], [1, 1]], fixed_global_heads=[[1, 3]], window=4, fai_horizon=(2, 5)
    )
    s2 = compute_attention_stats(model, ids, attn, resp, fixed)
    assert s2.local_heads[:, 0, 0].all() and s2.local_heads[:, 1, 1].all() and s2.local_heads.sum() == 4
    assert s2.global_heads[:, 1, 3].all() and s2.global_heads.sum() == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda i, a, r: (i, a[:, :-1], r), "shape mismatch"),
        (lambda i, a, r: (i, a.clone().index_fill_(1, torch.tensor([6]), 0), r), "where attention_mask is 0"),
        (lambda i, a, r: (i, a, torch.zeros_like(r)), "empty response"),
        (lambda i, a, r: (i[0], a, r), "must be a 2-D tensor"),
    ],
)
def test_bad_inputs_raise(mutate, message):
    model, _ = tiny_model("llama", num_layers=2)
    ids, attn, resp = trl_batch([3, 3], [4, 4])
    with pytest.raises(ValueError, match=message):
        compute_attention_stats(model, *mutate(ids, attn, resp))


def test_padding_in_the_middle_and_layers_out_of_range_raise():
    model, _ = tiny_model("llama", num_layers=2)
    ids, attn, resp = trl_batch([4], [4])
    holed = attn.clone()
    holed[0, 1] = 0
    with pytest.raises(ValueError, match="padding between real tokens"):
        compute_attention_stats(model, ids, holed, resp)
    with pytest.raises(ValueError, match=r"out of range for a 2-layer model"):
        compute_attention_stats(model, ids, attn, resp, AttentionStatsConfig(layers=[0, 5]))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(window=0), "window"),
        (dict(fai_horizon=(5, 2)), "fai_horizon"),
        (dict(local_quantile=0.0), "local_quantile"),
        (dict(head_selection="per_token"), "head_selection"),
        (dict(head_selection="fixed"), "head_selection"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"AttentionStatsConfig.{key}"):
        AttentionStatsConfig(**kwargs)


def test_uncapturable_attention_gets_a_clear_error():
    """A layer whose attention bypasses transformers' attention registry cannot be read."""
    model, _ = tiny_model("llama", num_layers=2)
    attn_module = model.model.layers[1].self_attn
    original = attn_module.forward

    def linear_attention(hidden_states, *args, **kwargs):  # a non-softmax stand-in
        return torch.zeros_like(hidden_states), None

    attn_module.forward = linear_attention
    ids, attn, resp = trl_batch([3], [4])
    with pytest.raises(ValueError, match=r"layers 1 \(model.layers.1.self_attn\) was not captured"):
        compute_attention_stats(model, ids, attn, resp, AttentionStatsConfig(layers=[0, 1]))
    attn_module.forward = original


def test_statistics_stay_fp32_and_exact_under_bf16_autocast():
    """The trainer runs forwards under bf16 autocast; the reduction must not follow it."""
    model, _ = tiny_model("llama", num_layers=2, seed=6)
    ids, attn, resp = trl_batch([4, 6], [10, 8], seed=2)
    cfg = AttentionStatsConfig(window=4, fai_horizon=(2, 6))
    plain = compute_attention_stats(model, ids, attn, resp, cfg)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        auto = compute_attention_stats(model, ids, attn, resp, cfg)
    assert auto.waad.dtype == torch.float32 and auto.fai.dtype == torch.float32 and auto.head_span.dtype == torch.float32
    # the forward itself runs in bf16 under autocast, so q/k differ slightly; the reduction is fp32
    torch.testing.assert_close(auto.waad, plain.waad, atol=0.1, rtol=0)


def test_reducer_reads_queries_of_the_last_positions_only():
    """A pass on top of a cached prompt prefix gives the reducer the suffix's queries and the whole
    row's keys; the statistics equal those from whole-row queries (the response rows are all it reads),
    and queries that miss a response row are refused."""
    from rlattn.credit.attention_stats import AttentionStatsConfig, StatsAccumulator

    torch.manual_seed(0)
    B, H, KV, N, D, P = 3, 4, 2, 14, 8, 6
    q, k = torch.randn(B, H, N, D), torch.randn(B, KV, N, D)
    am = torch.ones(B, N, dtype=torch.bool)
    am[0, :2] = False  # left padding in one row
    resp = am.clone()
    resp[:, :P] = False
    cfg = AttentionStatsConfig(window=3, fai_horizon=(2, 6))
    stats = []
    for start in (0, P - 1, P):  # whole rows, the shared pass's suffix (last prompt token on), responses only
        acc = StatsAccumulator(cfg, [0, 1], am, resp)
        for layer in (0, 1):
            acc.callback(layer, q[:, :, start:] * (layer + 1), k, 0.3)
        stats.append(acc.result())
    for other in stats[1:]:
        for key in ("waad", "fai"):
            torch.testing.assert_close(getattr(other, key)[resp], getattr(stats[0], key)[resp], atol=1e-6, rtol=0,
                                       equal_nan=True)
        assert torch.equal(other.local_heads, stats[0].local_heads) and torch.equal(other.global_heads, stats[0].global_heads)
    acc = StatsAccumulator(cfg, [0, 1], am, resp)
    with pytest.raises(ValueError, match="expected"):
        acc.callback(0, q[:, :, P + 1:], k, 0.3)
