"""One prefix pass per distinct prompt (rlattn/shared_prompt.py) equals TRL's pass over whole rows:
log-probs, entropies and gradients, for full fine-tuning and LoRA, on left-padded prompts."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from trl.trainer.utils import add_fused_lm_head

from rlattn.shared_prompt import prompt_groups, shared_prompt_logps
from rlattn.testing import tiny_model
from tests.rlattn.test_credit_paths import _clone, _grads, make_trainer, toy_dataset


def test_prompt_groups_by_hand():
    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 5, 6], [7, 8, 9], [1, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])
    first, row_to_group = prompt_groups(ids, mask)
    assert first.tolist() == [0, 1, 4]  # first row of each prompt, in order of appearance
    assert row_to_group.tolist() == [0, 1, 0, 1, 2]
    mask[2, 0] = 1  # same ids, different padding: a different prompt
    first, row_to_group = prompt_groups(ids, mask)
    assert first.tolist() == [0, 1, 2, 4] and row_to_group.tolist() == [0, 1, 2, 1, 3]


def _batch(vocab, seed=0):
    """Three prompts (left-padded to 7 columns) x repeats in shuffled order, completions right-padded to 6."""
    g = torch.Generator().manual_seed(seed)
    P, C = 7, 6
    prompts, pmasks = [], []
    for length in (7, 4, 5):
        ids = torch.randint(3, vocab, (P,), generator=g)
        m = torch.zeros(P, dtype=torch.long)
        m[P - length:] = 1
        prompts.append(ids * m)
        pmasks.append(m)
    order = [0, 1, 0, 2, 1, 0, 2, 1]
    comp = torch.randint(3, vocab, (len(order), C), generator=g)
    cmask = torch.ones_like(comp)
    for row, n in enumerate([6, 3, 5, 1, 6, 2, 4, 6]):
        cmask[row, n:] = 0
    ids = torch.cat([torch.stack([prompts[i] for i in order]), comp * cmask], 1)  # [8, 13]
    mask = torch.cat([torch.stack([pmasks[i] for i in order]), cmask], 1)
    return ids, mask, C


def _trl_pass(model, ids, mask, C):
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-C] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -C:], out.entropy[:, -C:]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_shared_pass_equals_whole_rows(arch, lora):
    model, _ = tiny_model(arch, num_layers=2, seed=0)
    model.float()
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 init_lora_weights=False))
    model.train()
    ids, mask, C = _batch(model.config.vocab_size)
    weights = torch.rand(ids.size(0), C, generator=torch.Generator().manual_seed(1))  # a loss touching every token

    ref_lp, ref_ent = _trl_pass(model, ids, mask, C)
    model.zero_grad(set_to_none=True)
    (ref_lp * weights * mask[:, -C:]).sum().backward()
    ref_grads = _grads(model)

    lp, ent = shared_prompt_logps(model, ids, mask, C, compute_entropy=True, autocast=torch.enable_grad)
    model.zero_grad(set_to_none=True)
    (lp * weights * mask[:, -C:]).sum().backward()
    grads = _grads(model)

    valid = mask[:, -C:].bool()
    torch.testing.assert_close(lp[valid], ref_lp[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[valid], ref_ent[valid], atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys() and grads
    if lora:
        assert all("lora_" in n for n in grads)  # the base stays frozen
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_trainer_loss_and_gradients_equal_with_and_without_sharing(tmp_path, monkeypatch):
    """The piggyback layout (num_iterations 2): the old-log-prob pass captures statistics over whole
    rows, the loss pass shares prompts; loss and gradients equal the unshared trainer's."""
    import rlattn.trainer as core

    calls = []
    real = core.shared_prompt_logps
    monkeypatch.setattr(core, "shared_prompt_logps", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    results = []
    for share in (False, True):
        trainer = make_trainer(tmp_path / str(share), lora=True, num_iterations=2, share_prompt_prefix=share)
        trainer.model.train()
        assert trainer.credit_path() == "piggyback"
        n_before = len(calls)
        out = trainer._generate_and_score_completions([toy_dataset()[i] for i in (0, 0, 1, 1)])  # prompts repeat
        assert len(calls) == n_before  # the captured old-log-prob pass runs whole rows
        assert trainer.last_credit["path"] == "piggyback"
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(trainer.model, _clone(out))
        loss.backward()
        assert len(calls) == n_before + int(share)
        results.append((out, loss.detach(), _grads(trainer.model)))
    (out0, loss0, g0), (out1, loss1, g1) = results
    torch.testing.assert_close(out1["completion_ids"], out0["completion_ids"], atol=0, rtol=0)  # same rollouts
    torch.testing.assert_close(out1["advantages"], out0["advantages"], atol=1e-6, rtol=0)
    assert out0["advantages"].abs().sum() > 0  # not vacuous: the loss has gradients to compare
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=0)
    assert g0.keys() == g1.keys() and g0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kw", [dict(gradient_checkpointing=True, credit_strategy="uniform"), dict()],
                         ids=["grad_ckpt", "fused_capture"])
def test_whole_rows_where_sharing_cannot_apply(tmp_path, monkeypatch, kw):
    import rlattn.trainer as core

    monkeypatch.setattr(core, "shared_prompt_logps", lambda *a, **k: pytest.fail("shared pass ran"))
    trainer = make_trainer(tmp_path, share_prompt_prefix=True, **kw)
    trainer.model.train()
    out = trainer._generate_and_score_completions([toy_dataset()[i] for i in range(4)])
    trainer._compute_loss(trainer.model, out).backward()  # fused path: the loss forward captures q/k


def test_trainer_shares_only_chunks_with_a_repeated_prompt(tmp_path, monkeypatch):
    """A chunk whose prompts are all distinct has nothing to share: TRL's one whole-row pass runs,
    not two passes; a chunk with repeats takes the shared pass. Both equal TRL's result."""
    import rlattn.trainer as core
    from trl import GRPOTrainer

    calls = []
    real = core.shared_prompt_logps
    monkeypatch.setattr(core, "shared_prompt_logps", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    trainer = make_trainer(tmp_path, share_prompt_prefix=True, credit_strategy="uniform")
    trainer.model.train()
    ids, mask, C = _batch(trainer.model.config.vocab_size)
    for rows, shared in (([0, 1, 3], 0), (list(range(8)), 2)):  # 8 rows in chunks of 4: both chunks repeat a prompt
        lp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids[rows], mask[rows], C, batch_size=4)
        ref, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids[rows], mask[rows], C,
                                                                   batch_size=4)
        assert len(calls) == shared
        valid = mask[rows][:, -C:].bool()
        torch.testing.assert_close(lp[valid], ref[valid], atol=1e-5, rtol=0)
        calls.clear()
