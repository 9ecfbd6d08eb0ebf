"""Sliding windows, chunks, logit soft-capping and sinks: refused at construction, or exact (#20).

rlattn recomputes each selected layer's attention as a plain causal softmax of its post-RoPE q and k.
A sliding window changes that softmax only for sequences longer than the window; soft-capping
(Gemma2's ``attn_logit_softcapping``) and sinks (GPT-OSS's learned per-head sink logits) always
change it. Since cbd40e2 the trainer checks this when it is built, against the longest prompt of
the training set plus ``max_completion_length``; before, the refusal came from the capture at the
first training step, after the first generation. Tiny Gemma2, Gemma3, Cohere2 and GPT-OSS
configs are built in code (all four build and run on CPU with transformers 5.19). A window that
holds every sequence is accepted, and the statistics then equal a naive reference computed from the
model's own attention maps (eager ``output_attentions``). ``uniform``, ``random`` and
``high_entropy`` read no attention and train on every one of these models.

Llama 4's chunked attention (a query sees only the keys of its own block of
``attention_chunk_size`` positions) lives in the attention mask alone, so neither the construction
check nor the capture saw it, and the statistics of sequences longer than a chunk came out silently
wrong (WAAD off by ~3.5 on a tiny model); it is now handled like a sliding window.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from datasets import Dataset

from rlattn.config import AttnCreditConfig
from rlattn.testing import byte_tokenizer, digit_reward
from rlattn.trainer import AttnCreditGRPOTrainer

ATOL = 1e-5
LONG_WINDOW = 4096  # > longest prompt (~30 tokens) + max_completion_length (16)
SHORT_WINDOW = 8

# the window changes the default layers' statistics: middle third of 4 layers = [1, 2], of 6 = [2, 3, 4]
ARCHS = {
    "gemma2": dict(num_hidden_layers=4, attn_logit_softcapping=None, query_pre_attn_scalar=8),  # layers 0, 2 sliding
    "gemma3_text": dict(num_hidden_layers=6, query_pre_attn_scalar=8),  # layers 0-4 sliding, 5 full
    "cohere2": dict(num_hidden_layers=4),  # layers 0-2 sliding, 3 full
}


def build(arch, seed=0, **overrides):
    """A tiny random causal LM of ``arch`` (AutoConfig.for_model) with the byte tokenizer's vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = byte_tokenizer()
    kw = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              head_dim=8, max_position_embeddings=8192, initializer_range=0.2, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    kw.update(ARCHS.get(arch, {}))
    kw.update(overrides)
    config = AutoConfig.for_model(arch, **kw)
    config._attn_implementation = "eager"
    saved = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    finally:
        torch.random.set_rng_state(saved)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def toy_dataset(n=4):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i)} for i in range(n)]
    )


def make_trainer(tmp_path, model, tok, strategy="coupled", **kw):
    args = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=16,
                max_steps=1, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                seed=0, beta=0.0, use_cpu=True, dataloader_num_workers=0, attn_fai_horizon=[2, 8], attn_window=4,
                credit_strategy=strategy)
    args.update(kw)
    return AttnCreditGRPOTrainer(model=model, reward_funcs=[digit_reward], args=AttnCreditConfig(**args),
                                 train_dataset=toy_dataset(), processing_class=tok)


@torch.no_grad()
def naive_stats(model, ids, am, resp, cfg):
    """WAAD and FAI [B, N] by docs/credit.md, literally, from the model's own N×N attention maps (float64)."""
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=ids, attention_mask=am, output_attentions=True, use_cache=False)
    finally:
        model.train(was_training)
    layers = cfg.resolve_layers(model.config.num_hidden_layers)
    maps = torch.stack([out.attentions[l].double() for l in layers], 1)  # [B, nL, H, N, N]
    B, nL, H, N, _ = maps.shape
    pos = torch.arange(N)
    dist = (pos[:, None] - pos[None, :]).clamp(min=0).double()  # [N, N]: t − s for s ≤ t
    W, (h_lo, h_hi) = cfg.window, cfg.fai_horizon
    waad = torch.zeros(B, N, dtype=torch.float64)
    fai = torch.full((B, N), float("nan"), dtype=torch.float64)
    for b in range(B):
        R = resp[b].nonzero().flatten()
        span = (maps[b] * dist).sum(-1)[:, :, R].mean(-1)  # [nL, H]
        heads = [(i, h) for i in range(nL) for h in range(H)]
        k_loc = math.ceil(cfg.local_quantile * len(heads) - 1e-9)
        k_glob = math.ceil(cfg.global_quantile * len(heads) - 1e-9)
        small = sorted(heads, key=lambda ih: (float(span[ih]), ih))[:k_loc]
        large = sorted(heads, key=lambda ih: (-float(span[ih]), ih))[:k_glob]
        a_loc = sum(maps[b, i, h] for i, h in small) / k_loc  # [N, N]
        a_glob = sum(maps[b, i, h] for i, h in large) / k_glob
        waad[b, R] = (a_loc * dist.clamp(max=W))[R].sum(-1)
        for s in am[b].nonzero().flatten().tolist():
            T = [t for t in R.tolist() if s + h_lo <= t <= s + h_hi]
            if T:
                fai[b, s] = a_glob[T, s].mean()
    return waad, fai


def _spy_generation(trainer, on_batch):
    original = trainer._generate_and_score_completions
    records = []

    def spy(inputs):
        output = original(inputs)
        snap = {k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in output.items()}
        records.append((snap, on_batch(snap)))
        return output

    trainer._generate_and_score_completions = spy
    return records


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def assert_statistics_match_naive(tmp_path, model, tok, **kw):
    """Train one step with coupled credit (fused path); the loss forward's WAAD/FAI equal the naive reference."""
    trainer = make_trainer(tmp_path, model, tok, **kw)

    def reference(batch):
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        am = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        resp = torch.cat([torch.zeros_like(batch["prompt_mask"]), batch["completion_mask"]], 1).bool()
        return naive_stats(trainer.model, ids, am, resp, trainer.stats_config)

    records = _spy_generation(trainer, reference)
    trainer.train()
    assert all(math.isfinite(l) for l in _losses(trainer)) and len(_losses(trainer)) == 1
    batch, (waad, fai) = records[-1]
    P = batch["prompt_ids"].size(1)
    credit = trainer.last_credit
    mask = credit["mask"]
    torch.testing.assert_close(credit["waad"][mask].double(), waad[:, P:][mask], atol=ATOL, rtol=0)
    torch.testing.assert_close(credit["fai"].double(), fai[:, P:], atol=ATOL, rtol=0, equal_nan=True)
    assert (credit["gamma"][mask] > 1).any()
    return trainer, batch


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_window_that_changes_the_statistics_is_refused_at_construction(tmp_path, arch):
    model, tok = build(arch, sliding_window=SHORT_WINDOW)
    with pytest.raises(ValueError, match=rf"use sliding-window attention \(sliding_window={SHORT_WINDOW}\) and sequences "
                                         r"here reach \d+ tokens") as err:
        make_trainer(tmp_path, model, tok)  # construction only: no generation, no training step
    assert "Choose attn_layers among the full-attention layers" in str(err.value)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_window_that_holds_every_sequence_is_accepted_and_exact(tmp_path, arch):
    model, tok = build(arch, sliding_window=LONG_WINDOW)
    trainer, batch = assert_statistics_match_naive(tmp_path, model, tok)
    N = batch["prompt_ids"].size(1) + batch["completion_ids"].size(1)
    assert N <= LONG_WINDOW
    assert trainer._max_sequence_length() <= LONG_WINDOW


def test_full_attention_layers_of_a_windowed_model_are_accepted_and_exact(tmp_path):
    # the message's fix: read only the full-attention layers; here the window bites on the other layers
    model, tok = build("gemma2", sliding_window=SHORT_WINDOW)
    _, batch = assert_statistics_match_naive(tmp_path, model, tok, attn_layers=[1, 3])
    assert batch["prompt_ids"].size(1) + batch["completion_ids"].size(1) > SHORT_WINDOW


@pytest.mark.parametrize("strategy", ["coupled", "local_chunk", "global_anchor"])
def test_soft_capping_is_refused_at_construction(tmp_path, strategy):
    model, tok = build("gemma2", sliding_window=LONG_WINDOW, attn_logit_softcapping=50.0)
    with pytest.raises(ValueError, match=r"logit soft-capping \(attn_logit_softcapping=50.0\).*Use credit_strategy uniform, "
                                         r"random or high_entropy"):
        make_trainer(tmp_path, model, tok, strategy=strategy)


def test_sinks_are_refused_at_construction(tmp_path):
    model, tok = build("gpt_oss", num_hidden_layers=4, sliding_window=LONG_WINDOW, num_local_experts=2, num_experts_per_tok=1)
    with pytest.raises(ValueError, match=r"use attention sinks .*Use credit_strategy uniform, random or high_entropy"):
        make_trainer(tmp_path, model, tok)


@pytest.mark.parametrize(
    "arch, overrides, strategy",
    [
        ("gemma2", dict(sliding_window=SHORT_WINDOW, attn_logit_softcapping=50.0), "uniform"),
        ("gemma2", dict(sliding_window=SHORT_WINDOW, attn_logit_softcapping=50.0), "random"),
        ("gemma2", dict(sliding_window=SHORT_WINDOW, attn_logit_softcapping=50.0), "high_entropy"),
        ("gpt_oss", dict(num_hidden_layers=4, sliding_window=SHORT_WINDOW, num_local_experts=2, num_experts_per_tok=1),
         "high_entropy"),
        ("gemma3_text", dict(sliding_window=SHORT_WINDOW), "random"),
    ],
    ids=["gemma2-softcap-uniform", "gemma2-softcap-random", "gemma2-softcap-high_entropy", "gpt_oss-high_entropy",
         "gemma3-window-random"],
)
def test_strategies_that_read_no_attention_train_on_any_attention(tmp_path, arch, overrides, strategy):
    model, tok = build(arch, **overrides)
    trainer = make_trainer(tmp_path, model, tok, strategy=strategy)
    trainer.train()
    assert len(_losses(trainer)) == 1 and all(math.isfinite(l) for l in _losses(trainer))
    if strategy != "uniform":
        credit = trainer.last_credit
        assert (credit["gamma"][credit["mask"]] > 1).any()


def build_llama4(chunk):
    # layer types from no_rope_layer_interval 2: chunked (RoPE) layers 0, 2, full (NoPE) layers 1, 3
    return build("llama4_text", num_hidden_layers=4, attention_chunk_size=chunk, no_rope_layer_interval=2,
                 num_local_experts=2, num_experts_per_tok=1, intermediate_size_mlp=64)


def test_chunked_attention_that_changes_the_statistics_is_refused_at_construction(tmp_path):
    model, tok = build_llama4(SHORT_WINDOW)
    assert model.config.layer_types[2] == "chunked_attention"
    with pytest.raises(ValueError, match=rf"layers \[2\] use chunked attention \(attention_chunk_size={SHORT_WINDOW}\)") as err:
        make_trainer(tmp_path, model, tok)
    assert "Choose attn_layers among the full-attention layers ([1, 3])" in str(err.value)


def test_chunked_attention_that_holds_every_sequence_is_accepted_and_exact(tmp_path):
    # TRL 1.16 itself cannot train Llama4ForCausalLM (its fused LM-head forward reads the backbone's
    # last_hidden_state, which Llama 4's MoE output lacks), so: construction, then a direct statistics pass
    from rlattn.credit import compute_attention_stats

    model, tok = build_llama4(LONG_WINDOW)
    trainer = make_trainer(tmp_path, model, tok)  # accepted
    ids = torch.randint(0, 250, (2, 3 * SHORT_WINDOW), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, SHORT_WINDOW:] = True
    stats = compute_attention_stats(trainer.model, ids, am, resp, trainer.stats_config)
    waad, fai = naive_stats(trainer.model, ids, am, resp, trainer.stats_config)
    torch.testing.assert_close(stats.waad.double()[resp], waad[resp], atol=ATOL, rtol=0)
    torch.testing.assert_close(stats.fai.double(), fai, atol=ATOL, rtol=0, equal_nan=True)


@pytest.mark.parametrize("arch, what", [("gemma2", "sliding-window attention"), ("llama4", "chunked attention")])
def test_the_capture_refuses_what_the_construction_check_could_not_see(arch, what):
    # with the sequence lengths unknown at construction (an iterable dataset, say), the capture itself refuses
    from rlattn.credit import compute_attention_stats
    from rlattn.credit.attention_stats import AttentionStatsConfig

    model, _ = build_llama4(SHORT_WINDOW) if arch == "llama4" else build(arch, sliding_window=SHORT_WINDOW)
    ids = torch.randint(0, 250, (2, 3 * SHORT_WINDOW), generator=torch.Generator().manual_seed(0))
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, SHORT_WINDOW:] = True
    cfg = AttentionStatsConfig(window=4, fai_horizon=(2, 8))
    with pytest.raises(ValueError, match=what):
        compute_attention_stats(model, ids, torch.ones_like(ids), resp, cfg)
    short = ids[:, :SHORT_WINDOW]  # one window / chunk: plain causal softmax, accepted and exact
    short_resp = resp[:, :SHORT_WINDOW].clone()
    short_resp[:, 3:] = True
    stats = compute_attention_stats(model, short, torch.ones_like(short), short_resp, cfg)
    waad, fai = naive_stats(model, short, torch.ones_like(short), short_resp, cfg)
    torch.testing.assert_close(stats.waad.double()[short_resp], waad[short_resp], atol=ATOL, rtol=0)
    torch.testing.assert_close(stats.fai.double(), fai, atol=ATOL, rtol=0, equal_nan=True)
