"""The three ways the trainer gets its statistics agree: fused into the loss forward, piggybacked on
TRL's old-log-prob pass, and the extra early-exit pass (docs/trl-integration.md)."""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from rlattn.config import AttnCreditConfig
from rlattn.credit import apply_credit
from rlattn.testing import digit_reward, tiny_model
from rlattn.trainer import AttnCreditGRPOTrainer


def toy_dataset(n=8):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i)} for i in range(n)]
    )


def make_trainer(tmp_path, lora=False, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=24,
                max_steps=1, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                gradient_checkpointing=False, seed=0, beta=0.0, attn_fai_horizon=[2, 8], attn_window=4,
                credit_log_samples=0, use_cpu=True, credit_strategy="coupled")
    base.update(kw)
    model, tok = tiny_model("llama", num_layers=3, seed=0)
    peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if lora else None
    trainer = AttnCreditGRPOTrainer(model=model, reward_funcs=[digit_reward], args=AttnCreditConfig(**base),
                                    train_dataset=toy_dataset(), processing_class=tok, peft_config=peft)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; these tests call the hooks directly
    return trainer


def _clone(batch):
    return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad_ckpt"])
def test_fused_equals_the_extra_pass(tmp_path, lora, checkpointing):
    trainer = make_trainer(tmp_path, lora=lora, gradient_checkpointing=checkpointing)
    trainer.model.train()
    assert trainer.credit_path() == "fused"
    out = trainer._generate_and_score_completions([toy_dataset()[i] for i in range(4)])
    assert "credit_row" in out and out["advantages"].dim() == 1  # γ waits for the loss forward
    ref = _clone(out)
    ref.pop("credit_row")
    waad, fai, _ = trainer._credit_forward(ref)  # the early-exit pass on the same batch and weights
    mask = trainer._credit_mask(ref)
    gamma_ref = trainer.credit_fn(waad=waad, fai=fai, mask=mask, config=trainer.credit_config)
    ref["advantages"] = apply_credit(ref["advantages"], gamma_ref)  # [B, T]

    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, out)  # fused: captures q/k in this forward
    loss.backward()
    fused_grads = _grads(trainer.model)
    credit = trainer.last_credit
    assert credit["path"] == "fused" and "credit_row" not in out
    torch.testing.assert_close(credit["gamma"], gamma_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(credit["waad"][mask], waad[mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["advantages"], ref["advantages"], atol=1e-6, rtol=0)
    assert (gamma_ref[mask] > 1).any()  # not vacuous

    trainer.model.zero_grad(set_to_none=True)
    loss_ref = trainer._compute_loss(trainer.model, ref)  # advantages given: nothing is captured
    loss_ref.backward()
    torch.testing.assert_close(loss.detach(), loss_ref.detach(), atol=1e-7, rtol=0)
    ref_grads = _grads(trainer.model)
    assert fused_grads.keys() == ref_grads.keys() and fused_grads
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_high_entropy_reads_the_loss_forwards_entropies(tmp_path):
    trainer = make_trainer(tmp_path, credit_strategy="high_entropy")
    trainer.model.train()
    assert trainer.credit_path() == "fused"
    out = trainer._generate_and_score_completions([toy_dataset()[i] for i in range(4)])
    ref = _clone(out)
    ref.pop("credit_row")
    _, _, entropies = trainer._credit_forward(ref)  # an extra full forward with entropies
    mask = trainer._credit_mask(ref)
    gamma_ref = trainer.credit_fn(waad=torch.zeros(mask.shape), fai=torch.full(mask.shape, math.nan), mask=mask,
                                  entropies=entropies.float(), config=trainer.credit_config)
    trainer._compute_loss(trainer.model, out)
    torch.testing.assert_close(trainer.last_credit["gamma"], gamma_ref)
    assert set(torch.unique(gamma_ref[mask]).tolist()) == {1.0, 1.5}


@pytest.mark.parametrize("kw, path, extra", [
    (dict(), "fused", 0.0),
    (dict(num_iterations=2), "piggyback", 0.0),
    (dict(credit_fused=False), "extra", 1.0),
    (dict(credit_strategy="random"), "direct", 0.0),
], ids=["default", "old_logp_pass", "fusion_off", "no_pass_needed"])
def test_extra_forward_metric_says_which_path_ran(tmp_path, kw, path, extra):
    trainer = make_trainer(tmp_path, **kw)
    assert trainer.credit_path() == path
    trainer.train()
    logged = [h for h in trainer.state.log_history if "credit/extra_forward" in h]
    assert logged and all(h["credit/extra_forward"] == extra for h in logged), logged
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_uniform_hands_trl_its_own_sequence_advantages(tmp_path):
    trainer = make_trainer(tmp_path, credit_strategy="uniform")
    trainer.model.train()
    out = trainer._generate_and_score_completions([toy_dataset()[i] for i in range(4)])
    assert out["advantages"].dim() == 1 and "credit_row" not in out
