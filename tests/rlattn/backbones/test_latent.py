"""LatentPolicy: the ten checks of docs/backbones.md (the slow GRPO run is in test_grpo_backbone.py).

Tolerances: log-probs from generate vs forward within 1e-4 (fp32, absolute, per token); identity
at init and determinism are exact (0.0).
"""

import pytest
import torch

from rlattn.backbones import (
    TYPE_COMPLETION,
    TYPE_IMAGE,
    TYPE_LATENT,
    TYPE_PROMPT,
    TYPE_SPECIAL,
    LatentConfig,
    LatentPolicy,
    TokenSelector,
    apply_lora,
    trainable_parameter_groups,
)

from .conftest import batch, build, open_gates

LOGP_ATOL = 1e-4


def _positions(am):
    return (am.cumsum(-1) - 1).clamp(min=0)


def _real(logits, am):
    """Logits at real (non-padding) positions: fully masked padding rows are kernel-dependent garbage."""
    return logits[am[:, -logits.shape[1]:].bool()]


# 1. shapes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("image", [False, True])
def test_shapes(image):
    policy, proc, tok = build(image=image)
    x, am, pv = batch(proc, image=image)
    out = policy(x, am, pixel_values=pv)
    assert out.logits.shape == (*x.shape, policy.lm.config.vocab_size)
    assert policy(x, am, pixel_values=pv, logits_to_keep=3).logits.shape[1] == 3
    info = policy.last_latent_info
    assert info["selected"].shape == (2, 2, 3)  # [B, K, select_k]
    assert info["lqformer_attention"].shape == (2, 2, 4)  # [B, K, select_k + 1]
    seqs = policy.generate(x, attention_mask=am, pixel_values=pv, max_new_tokens=5, do_sample=False,
                           pad_token_id=tok.pad_token_id)
    assert seqs.shape[0] == 2 and seqs.shape[1] <= x.shape[1] + 5 and torch.equal(seqs[:, :x.shape[1]], x)
    if image:
        assert pv.shape == (2, 3, 32, 32)
        assert policy.image_states(pv).shape == (2, 16, 32)


# 2. identity at init ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["cocova", "fast"])
def test_identity_at_init_text(mode):
    policy, proc, _ = build(mode=mode)
    x, am, _ = batch(proc)
    got = policy(x, am).logits
    want = policy.lm(input_ids=x, attention_mask=am, position_ids=_positions(am)).logits
    assert torch.equal(got, want)  # gates at 0: z_k = embed(<lat>), the base LM with K pause tokens


def test_identity_at_init_image():
    policy, proc, _ = build(image=True)
    x, am, pv = batch(proc, image=True)
    emb = policy.lm.get_input_embeddings()(x)
    img = x == policy.token_ids["image"]
    emb = emb.masked_scatter(img[..., None], policy.image_states(pv))
    want = policy.lm(inputs_embeds=emb, attention_mask=am, position_ids=_positions(am)).logits
    assert torch.equal(policy(x, am, pixel_values=pv).logits, want)


def test_frozen_gates_are_the_pause_token_ablation():
    policy, proc, _ = build(freeze_gates=True)
    assert not any(p.requires_grad for b in policy.lqformer.blocks for p in (b.alpha, b.beta))
    x, am, _ = batch(proc)
    want = policy.lm(input_ids=x, attention_mask=am, position_ids=_positions(am)).logits
    assert torch.equal(policy(x, am).logits, want)


# 3. determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["cocova", "fast"])
def test_deterministic_in_train_mode_too(mode):
    policy, proc, _ = build(mode=mode, image=True)
    open_gates(policy)
    x, am, pv = batch(proc, image=True)
    a = policy.eval()(x, am, pixel_values=pv).logits
    b = policy.train()(x, am, pixel_values=pv).logits  # no dropout anywhere in the latent path
    assert torch.equal(a, b)


# 4. generate-vs-forward log-probs ---------------------------------------------------------------

@pytest.mark.parametrize("mode,image,K", [("cocova", False, 2), ("fast", False, 2), ("cocova", True, 2),
                                          ("fast", True, 1), ("cocova", False, 4)])
def test_generate_logprobs_equal_forward_logprobs(mode, image, K):
    policy, proc, tok = build(mode=mode, image=image, K=K)
    open_gates(policy)  # latents now differ from the placeholder: the test can tell
    x, am, pv = batch(proc, image=image)
    torch.manual_seed(0)
    g = policy.generate(x, attention_mask=am, pixel_values=pv, max_new_tokens=6, do_sample=True,
                        output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    P, seq = x.shape[1], g.sequences
    T = seq.shape[1] - P
    full_am = torch.cat([am, torch.ones(seq.shape[0], T, dtype=am.dtype)], 1)
    logits = policy(seq, full_am, pixel_values=pv, logits_to_keep=T + 1).logits[:, :-1]
    new = seq[:, P:, None]
    fwd = torch.log_softmax(logits.float(), -1).gather(-1, new)[..., 0]
    gen = torch.log_softmax(torch.stack(g.logits, 1).float(), -1).gather(-1, new)[..., 0]
    assert (fwd - gen).abs().max() < LOGP_ATOL
    # and the latents matter: the base LM gives other log-probs
    base = policy.lm(input_ids=seq, attention_mask=full_am, position_ids=_positions(full_am)).logits[:, P - 1:-1]
    if not image:
        assert (torch.log_softmax(base.float(), -1).gather(-1, new)[..., 0] - fwd).abs().max() > 1e-3


# 5. gradients -----------------------------------------------------------------------------------

def test_gradients_reach_lora_lqformer_and_image_head_only():
    from peft import LoraConfig

    policy, proc, _ = build(image=True)
    open_gates(policy)
    apply_lora(policy, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    groups = trainable_parameter_groups(policy)
    assert set(groups) == {"lora", "lqformer", "encoder", "projector", "image_scale"}, groups
    x, am, pv = batch(proc, image=True)
    policy.train()
    policy(x, am, pixel_values=pv).logits.float().pow(2).mean().backward()  # lora_B gets the gradient (B = 0 at init)
    for name, p in policy.named_parameters():
        if p.requires_grad:
            if "lora_B" in name or name.startswith(("projector", "encoder")) or ".alpha" in name or "xattn" in name:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"


# 6. save / load ---------------------------------------------------------------------------------

@pytest.mark.parametrize("peft", [True, False])
def test_save_and_load_round_trip(tmp_path, peft):
    from peft import LoraConfig

    from rlattn.testing import tiny_model

    policy, proc, _ = build(image=True)
    open_gates(policy)
    if peft:
        apply_lora(policy, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], lora_dropout=0.0,
                                      init_lora_weights=False))
    x, am, pv = batch(proc, image=True)
    want = policy(x, am, pixel_values=pv).logits
    policy.save_pretrained(tmp_path / "ckpt")
    proc.save_pretrained(tmp_path / "ckpt")
    base = tiny_model("llama", num_layers=3, hidden_size=32, num_heads=4, num_kv_heads=2, seed=0)[0] if peft else None
    loaded = LatentPolicy.load(tmp_path / "ckpt", base_lm=base).eval()
    assert torch.allclose(_real(loaded(x, am, pixel_values=pv).logits, am), _real(want, am), atol=1e-5)
    from rlattn.backbones import LatentProcessor

    proc2 = LatentProcessor.from_saved(tmp_path / "ckpt")
    assert proc2.num_latents == 2 and proc2.num_image_tokens == 16
    assert proc2.tokenizer.convert_tokens_to_ids("<lat>") == policy.token_ids["latent"]


# 7. typed positions and attention ---------------------------------------------------------------

def test_type_ids_and_completion_attention():
    from rlattn.backbones.diagnostics import completion_attention

    policy, proc, tok = build(image=True)
    open_gates(policy)
    x, am, pv = batch(proc, image=True)
    seq = policy.generate(x, attention_mask=am, pixel_values=pv, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                          pad_token_id=tok.pad_token_id)
    P = x.shape[1]
    full_am = torch.cat([am, torch.ones(2, seq.shape[1] - P, dtype=am.dtype)], 1)
    types = policy.type_ids(seq, full_am, prompt_length=P)
    for row in range(2):
        t = types[row].tolist()
        assert t.count(TYPE_IMAGE) == 16 and t.count(TYPE_LATENT) == 2 and t.count(TYPE_SPECIAL) == 2
        assert t[P:] == [TYPE_COMPLETION] * (seq.shape[1] - P)
        assert TYPE_PROMPT in t
    assert (types[0] == -1).sum() == (full_am[0] == 0).sum()  # padding
    A = completion_attention(policy, seq, full_am, P, layers=[1, 2], num_sinks=1, pixel_values=pv)  # [B, T, N]
    assert A.shape == (2, seq.shape[1] - P, seq.shape[1])
    assert torch.allclose(A.sum(-1), torch.ones(2, seq.shape[1] - P), atol=1e-5)
    first_real = full_am.argmax(1)
    assert float(A[torch.arange(2), :, first_real].abs().max()) == 0.0  # the sink column is dropped
    assert (A[..., types[0] == TYPE_LATENT].sum(-1) > 0).all()
    assert (A[..., types[0] == TYPE_IMAGE].sum(-1) > 0).all()


# 8. TokenSelector -------------------------------------------------------------------------------

def test_token_selector_hand_made():
    w = torch.tensor([[0.50, 0.10, 0.20, 0.15, 0.05],    # column 0 is the sink
                      [0.00, 0.40, 0.10, 0.40, 0.10]])   # row 1: left padding at column 0; a tie 1 vs 3
    cand = torch.tensor([[True, True, True, True, False],
                         [False, True, True, True, True]])
    sinks = torch.tensor([[True, False, False, False, False],
                          [False, True, False, False, False]])
    idx, valid = TokenSelector(k=2)(w, cand, sinks)
    assert idx.tolist() == [[2, 3], [3, 2]] and valid.all()  # row 1: sink 1 dropped, then 3 > 2 (tie with 4 -> earlier)
    idx, valid = TokenSelector(k=2)(w, cand, torch.zeros_like(sinks))
    assert idx.tolist() == [[0, 2], [1, 3]]  # without sink removal the sink wins; the tie 1/3 goes to the earlier
    flat = torch.full((1, 300), 0.5)  # 300 exact ties (plain topk returns them out of order here)
    idx, _ = TokenSelector(k=50)(flat, torch.ones(1, 300, dtype=torch.bool), None)
    assert idx.tolist() == [list(range(50))]  # the earliest columns win
    idx, valid = TokenSelector(k=4)(w, torch.tensor([[False, True, True, False, False]] * 2), None)
    assert valid.tolist() == [[True, True, False, False], [True, True, False, False]]


def test_selection_picks_the_attended_columns():
    """cocova mode: the selected columns are the top of the position's own attention over candidates."""
    from rlattn.credit.aggregation import drop_columns, sink_mask

    policy, proc, _ = build(image=True, K=1)
    x, am, pv = batch(proc, image=True)
    policy(x, am, pixel_values=pv)
    sel = policy.last_latent_info["selected"][:, 0]  # [B, k]
    c0 = policy._latent_columns(x)[0]
    types = policy.type_ids(x, am)
    assert (types.gather(1, sel) == TYPE_IMAGE).all()
    # the attention row of <bot> again, masked here and ranked with plain topk
    e = policy.prepare_inputs_embeds(x[:, :c0], am[:, :c0], pv, insert_latents=False)
    _, w = policy._context_pass(e, am[:, :c0], c0 - 1)
    w = drop_columns(w[:, None], sink_mask(am[:, :c0].bool(), 1) | (types[:, :c0] != TYPE_IMAGE))[:, 0]
    assert torch.equal(w.topk(3).indices.sort(1).values, sel.sort(1).values)


# 9. both modes, K in {1, 4} ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["cocova", "fast"])
@pytest.mark.parametrize("K", [1, 4])
def test_modes_and_latent_counts(mode, K):
    policy, proc, _ = build(mode=mode, K=K, image=True)
    open_gates(policy)
    x, am, pv = batch(proc, image=True)
    assert (x == policy.token_ids["latent"]).sum(1).tolist() == [K, K]
    out = policy(x, am, pixel_values=pv).logits
    assert torch.isfinite(out).all()
    info = policy.last_latent_info
    assert info["lqformer_attention"].shape[1] == K
    if mode == "cocova":
        assert info["selected"].shape[:2] == (2, K)
    else:
        assert info["selected"] is None


# errors -----------------------------------------------------------------------------------------

def test_bad_latent_settings_name_the_key():
    with pytest.raises(ValueError, match="latent_mode='slow'"):
        LatentConfig(mode="slow")
    with pytest.raises(ValueError, match="latent_image_size=30"):
        LatentConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="latent_num_latents=0"):
        LatentConfig(num_latents=0)


def test_layout_errors_are_clear():
    policy, proc, tok = build(K=2)
    x, am, _ = batch(proc)
    bad = x.clone()
    bad[0, -2] = tok.pad_token_id  # one latent slot missing in row 0
    with pytest.raises(ValueError, match="<bot> followed by latent_num_latents=2 <lat>"):
        policy(bad, am)
    img_policy, img_proc, _ = build(image=True)
    xi, ami, _ = batch(img_proc, image=True)
    with pytest.raises(ValueError, match="neither pixel_values nor patch_embeds"):
        img_policy(xi, ami)
    with pytest.raises(ValueError, match="without an image head"):
        policy.image_states(torch.zeros(1, 3, 32, 32))


def test_placeholders_sampled_in_a_completion_are_ordinary_tokens():
    policy, proc, tok = build(K=2, image=True)
    open_gates(policy)
    x, am, pv = batch(proc, image=True)
    ids = policy.token_ids
    tail = torch.tensor([[ids["bot"], ids["latent"], ids["image"]]] * 2)
    seq = torch.cat([x, tail], 1)
    full = torch.cat([am, torch.ones_like(tail)], 1)
    out = policy(seq, full, pixel_values=pv).logits  # no layout error
    prefix = policy(x, am, pixel_values=pv).logits
    assert torch.allclose(_real(out[:, :x.shape[1]], am), _real(prefix, am), atol=1e-5)  # causal: the tail changes nothing


def test_gate_scale_keeps_identity_at_init_and_scales_the_gate():
    policy, proc, _ = build(mode="fast", gate_scale=30.0)
    x, am, _ = batch(proc)
    want = policy.lm(input_ids=x, attention_mask=am, position_ids=_positions(am)).logits
    assert torch.equal(policy(x, am).logits, want)
    with torch.no_grad():
        policy.lqformer.blocks[0].alpha.fill_(0.01)
    assert abs(policy.lqformer.gates()["block0/alpha"] - float(torch.tanh(torch.tensor(0.3)))) < 1e-6
    with pytest.raises(ValueError, match="latent_gate_scale=0"):
        LatentConfig(gate_scale=0)


def test_fast_mode_reads_only_the_candidate_columns():
    """With an image, the fast-mode LQ-Former attends to image patches (+ <bot>) only."""
    policy, proc, _ = build(mode="fast", image=True, K=1)
    open_gates(policy)
    x, am, pv = batch(proc, image=True)
    policy(x, am, pixel_values=pv)
    w = policy.last_latent_info["lqformer_attention"][:, 0]  # [B, c0]
    types = policy.type_ids(x, am)
    c0 = policy._latent_columns(x)[0]
    allowed = (types[:, :c0] == TYPE_IMAGE)
    allowed[:, -1] = True  # <bot>
    assert float(w[~allowed].abs().max()) == 0.0 and (w[allowed] > 0).any()


# latent noise (opt-in, docs/backbones.md) ------------------------------------------------------


@pytest.mark.parametrize("mode,image", [("cocova", False), ("fast", True)])
def test_latent_noise_is_a_policy_with_its_own_log_density(mode, image):
    """A sampling generate() in train mode draws z̃ = z + σ·ε; a pass given z̃ reproduces the
    generated tokens' log-probs (LOGP_ATOL) and reports Σ_k log N(z̃_k; z_k, σ²I) by hand (1e-4)."""
    import math

    sigma = 0.3
    policy, proc, tok = build(mode=mode, image=image, K=2, noise_std=sigma)
    open_gates(policy)
    x, am, pv = batch(proc, image=image)
    cols = policy._latent_columns(x)
    with torch.no_grad():
        z = policy.prepare_inputs_embeds(x, am, pv)[:, cols].float()  # [B, K, D] the mean: eval mode, no noise
    assert policy.last_sampled_latents is None
    policy.train()
    torch.manual_seed(0)
    g = policy.generate(x, attention_mask=am, pixel_values=pv, max_new_tokens=4, min_new_tokens=4, do_sample=True,
                        output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    zt = policy.last_sampled_latents  # [B, K, D]
    assert zt.shape == z.shape and (zt - z).abs().max() > 0.05
    P, seq = x.shape[1], g.sequences
    full = torch.cat([am, torch.ones(seq.shape[0], 4, dtype=am.dtype)], 1)
    with policy.using_sampled_latents(zt):
        logits = policy(seq, full, pixel_values=pv, logits_to_keep=5).logits[:, :-1]
    new = seq[:, P:, None]
    fwd = torch.log_softmax(logits.float(), -1).gather(-1, new)[..., 0]
    gen = torch.log_softmax(torch.stack(g.logits, 1).float(), -1).gather(-1, new)[..., 0]
    assert (fwd - gen).abs().max() < LOGP_ATOL
    d = z[0].numel()
    by_hand = -0.5 * ((zt - z) / sigma).pow(2).flatten(1).sum(1) - d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    assert torch.allclose(policy.last_latent_logp.detach(), by_hand, atol=1e-4)
    # the density's gradient reaches the LQ-Former (through z_θ); z̃ itself is a constant action
    policy.last_latent_logp.sum().backward()
    grads = [p.grad for p in policy.lqformer.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_latent_noise_off_the_sampling_path():
    """Greedy calls and eval mode use the mean; z̃ without noise configured is refused."""
    policy, proc, tok = build(K=2, noise_std=0.5)
    open_gates(policy)
    x, am, _ = batch(proc)
    policy.train()
    greedy = policy.generate(x, attention_mask=am, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert policy.last_sampled_latents is None
    policy.eval()
    policy.generate(x, attention_mask=am, max_new_tokens=3, do_sample=True, pad_token_id=tok.pad_token_id)
    assert policy.last_sampled_latents is None
    assert torch.equal(greedy, policy.generate(x, attention_mask=am, max_new_tokens=3, do_sample=False,
                                               pad_token_id=tok.pad_token_id))  # train-mode greedy used the mean too
    plain, _, _ = build(K=2)
    with pytest.raises(ValueError, match="latent_noise is 0"):
        with plain.using_sampled_latents(torch.zeros(2, 2, 32)):
            pass
    with pytest.raises(ValueError, match="latent_noise=-0.1"):
        build(noise_std=-0.1)


def test_sampled_latents_context_never_reports_a_stale_density():
    """Entering the context clears ``last_latent_logp``: a pass that inserts no latents leaves it None."""
    policy, proc, tok = build(K=2, noise_std=0.2)
    x, am, _ = batch(proc)
    zt = torch.zeros(x.shape[0], 2, policy.config.hidden_size)
    with policy.using_sampled_latents(zt):
        policy(x, am)
    assert policy.last_latent_logp is not None
    with policy.using_sampled_latents(zt):
        policy.lm(input_ids=x, attention_mask=am)  # the bare LM: no latent path runs
    assert policy.last_latent_logp is None
