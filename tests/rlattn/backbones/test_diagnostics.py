"""Typed credit: attention mass by type, latent credit, patch maps and grounding accuracy by hand."""

import torch

from rlattn.backbones import TYPE_COMPLETION, TYPE_IMAGE, TYPE_LATENT, TYPE_PROMPT
from rlattn.backbones.diagnostics import grounding_accuracy, typed_credit


def test_typed_credit_by_hand():
    # columns: prompt, image, image, latent, completion, completion
    types = torch.tensor([[TYPE_PROMPT, TYPE_IMAGE, TYPE_IMAGE, TYPE_LATENT, TYPE_COMPLETION, TYPE_COMPLETION]] * 2)
    A = torch.tensor([
        [[0.1, 0.2, 0.3, 0.4, 0.0, 0.0], [0.0, 0.5, 0.0, 0.25, 0.25, 0.0]],
        [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.1, 0.0, 0.0]],  # row 1's second token is padding
    ])  # [B=2, T=2, N=6]
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([[1.0, -2.0], [3.0, 3.0]])
    r = typed_credit(A, types, mask, adv)
    assert torch.allclose(r["latent_mass"], torch.tensor([(0.4 + 0.25) / 2, 0.0]))
    assert torch.allclose(r["image_mass"], torch.tensor([(0.5 + 0.5) / 2, 1.0]))
    # latent credit row 0: (0.4·1 + 0.25·(-2)) / 0.65
    assert torch.allclose(r["latent_credit"][0], torch.tensor([(0.4 - 0.5) / 0.65]))
    assert r["latent_credit"][1].item() == 0.0  # no attention: 0 / eps
    assert torch.allclose(r["patch_mass"], torch.tensor([[0.35, 0.15], [0.0, 1.0]]))
    # patch credit row 0: patch 1: (0.2·1 + 0.5·(-2)) / 0.7, patch 2: (0.3·1) / 0.3
    assert torch.allclose(r["patch_credit"][0], torch.tensor([-0.8 / 0.7, 1.0]))
    assert torch.allclose(r["patch_credit"][1], torch.tensor([0.0, 3.0]))


def test_grounding_accuracy_by_hand():
    # 32 px, patch 8: a 4x4 grid; patch 0 is tl, 3 is tr, 12 is bl, 15 is br
    mass = torch.zeros(4, 16)
    mass[0, 0] = 1.0   # tl, target tl -> hit
    mass[1, 3] = 1.0   # tr, target tl -> miss
    mass[2, 12] = 1.0  # bl, target bl -> hit
    mass[3, 10] = 1.0  # patch row 2, col 2 -> br, target br -> hit
    assert grounding_accuracy(mass, torch.tensor([0, 0, 2, 3]), 32, 8) == 0.75


def _generated(n, new_tokens):
    """A tiny image policy with open gates and its greedy completions of exactly ``new_tokens``:
    ``(policy, processor, sequences [n, P+T], attention mask [n, P+T], P, pixel_values)``."""
    from .conftest import batch, build, open_gates

    policy, proc, tok = build(image=True, K=2)
    open_gates(policy)
    x, am, pv = batch(proc, image=True, n=n)
    seq = policy.generate(x, attention_mask=am, pixel_values=pv, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=tok.pad_token_id)
    P = x.shape[1]
    full = torch.cat([am, torch.ones(n, seq.shape[1] - P, dtype=am.dtype)], 1)
    return policy, proc, seq, full, P, pv


def test_collecting_during_the_statistics_pass_equals_a_separate_pass():
    """The trainer gets the completion attention from its statistics pass (in row chunks) instead
    of an extra forward; both must give the same [B, T, N] (atol 1e-6)."""
    from rlattn.backbones.diagnostics import CompletionAttention, completion_attention
    from rlattn.credit.attention_stats import AttentionStatsConfig, compute_attention_stats

    policy, proc, seq, full, P, pv = _generated(n=3, new_tokens=4)
    resp = torch.zeros_like(full, dtype=torch.bool)
    resp[:, P:] = True
    cfg = AttentionStatsConfig(layers=[1, 2], window=2, fai_horizon=(1, 3))
    collector = CompletionAttention(full, P, num_sinks=1)
    for r in (torch.tensor([0, 2]), torch.tensor([1])):  # chunks, like the trainer's batches
        compute_attention_stats(policy, seq[r], full[r], resp[r], cfg, observer=collector.for_rows(r), pixel_values=pv[r])
    alone = completion_attention(policy, seq, full, P, layers=[1, 2], num_sinks=1, pixel_values=pv)
    assert torch.allclose(collector.result(), alone, atol=1e-6)
    assert CompletionAttention(full, P).result() is None  # nothing captured: the caller runs its own pass


def test_row_t_is_the_attention_that_emits_completion_token_t():
    """Token t's logits come from position P + t - 1, so row 0 is the last prompt position (<eot>):
    against the model's own eager attention maps (layers 1-2 and heads averaged, the sink column
    dropped and the rest renormalised; atol 1e-5)."""
    from rlattn.backbones.diagnostics import completion_attention

    policy, proc, seq, full, P, pv = _generated(n=2, new_tokens=3)
    A = completion_attention(policy, seq, full, P, layers=[1, 2], num_sinks=1, pixel_values=pv)  # [2, 3, N]
    with torch.no_grad():
        maps = policy(seq, full, pixel_values=pv, output_attentions=True).attentions  # L x [B, H, N, N]
    ref = torch.stack([maps[1], maps[2]]).mean((0, 2))[:, P - 1:-1]  # [B, T, N]: rows P-1 .. N-2
    first = full.float().argmax(1)  # the sink: each row's first real column
    ref[torch.arange(2), :, first] = 0.0
    ref = ref / ref.sum(-1, keepdim=True)
    assert A.shape == (2, 3, seq.shape[1])
    assert torch.allclose(A, ref, atol=1e-5)
    assert seq[0, P - 1] == proc.tokenizer.convert_tokens_to_ids("<eot>")  # row 0 is <eot>'s attention


class _ReadsOnePatch(torch.nn.Module):
    """A stand-in policy: the completion's logit of token 1 is 5 x the red mean of patch 3 (of a
    2x2 grid of 2 px patches); everything else is 0. Occluding patch 3 must be the only drop."""

    def forward(self, input_ids, attention_mask, pixel_values=None, logits_to_keep=0):
        from types import SimpleNamespace

        B, N = input_ids.shape
        logits = torch.zeros(B, N, 3)
        logits[:, :, 1] = 5.0 * pixel_values[:, 0, 2:4, 2:4].mean((1, 2))[:, None]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:])


def test_occlusion_map_by_hand():
    from rlattn.backbones.diagnostics import occlusion_map

    pv = torch.zeros(2, 3, 4, 4)
    pv[0, 0, 2:4, 2:4] = 1.0  # sample 0: the red square is patch 3 (br); the median colour is 0
    pv[1, 0, 0:2, 0:2] = 1.0  # sample 1: the square is patch 0, which the model does not read
    ids = torch.tensor([[0, 0, 1], [0, 0, 1]])  # prompt of 2, completion token 1
    am = torch.ones_like(ids)
    m = occlusion_map(_ReadsOnePatch(), ids, am, 2, pv, patch_size=2)  # [2, 4]
    # sample 0: log softmax([0, 5, 0])[1] - log softmax([0, 0, 0])[1] for patch 3, 0 elsewhere
    expected = torch.log_softmax(torch.tensor([0.0, 5.0, 0.0]), 0)[1] - torch.log(torch.tensor(1 / 3))
    assert torch.allclose(m[0], torch.tensor([0.0, 0.0, 0.0, float(expected)]), atol=1e-6)
    assert torch.allclose(m[1], torch.zeros(4))
    assert grounding_accuracy(m[:1], torch.tensor([3]), 4, 2) == 1.0


def test_quadrant_report_gives_no_grounding_to_a_policy_that_ignores_the_image():
    """With the image head's gain at 0 the patches are zero vectors whatever the pixels: every
    occlusion costs exactly 0 nats, so occlusion grounding is 0 (a bare argmax would say 1/4)."""
    from rlattn.data.synthetic import generate_quadrant
    from rlattn.backbones.diagnostics import quadrant_report

    from .conftest import build

    policy, proc, tok = build(image=True, K=2)
    with torch.no_grad():
        policy.image_scale.zero_()
    r = quadrant_report(policy, proc, generate_quadrant(6, seed=3), batch_size=4)
    assert r["n"] == 6 and 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["grounding_attention"] <= 1.0
    assert r["grounding_occlusion"] == 0.0
    assert r["occlusion_drop_target"] == 0.0 and r["occlusion_drop_other"] == 0.0
