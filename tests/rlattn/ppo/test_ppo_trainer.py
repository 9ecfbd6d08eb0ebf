"""AttnCreditPPOTrainer on a tiny random model: GAE advantages, the loss by hand, credit on GAE,
the critic learning, adapter isolation, exact resume, config errors, scripts/ppo.py."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from rlattn.ppo import AttnCreditPPOConfig, AttnCreditPPOTrainer
from rlattn.testing import digit_reward, tiny_model

ROOT = Path(__file__).resolve().parents[3]


def toy_dataset(n=8):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i)} for i in range(n)]
    )


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=1, max_completion_length=12,
                max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                gradient_checkpointing=False, seed=0, beta=0.0, temperature=1.0, attn_fai_horizon=[2, 8], attn_window=4,
                credit_log_samples=0, use_cpu=True, dataloader_num_workers=0, credit_strategy="uniform",
                ppo_whiten_advantages=False, loss_type="bnpo")
    base.update(kw)
    return AttnCreditPPOConfig(**base)


def make_trainer(tmp_path, lora=True, **kw):
    model, tok = tiny_model("llama", num_layers=3, seed=0)
    peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if lora else None
    return AttnCreditPPOTrainer(model=model, reward_funcs=[digit_reward], args=make_args(tmp_path, **kw),
                                train_dataset=toy_dataset(), processing_class=tok, peft_config=peft)


def generation_batch(trainer):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; these tests call the hooks directly
    return trainer._generate_and_score_completions([toy_dataset()[i] for i in range(4)])


def test_advantages_are_gae_of_the_sequence_rewards(tmp_path):
    # The value head starts at 0, so with γ = 1: δ_t = 0 except δ_{L−1} = R, and A_t = λ^(L−1−t)·R.
    trainer = make_trainer(tmp_path, ppo_lambda=0.5)
    out = generation_batch(trainer)
    mask = out["completion_mask"].bool()
    texts = trainer.processing_class.batch_decode(
        [ids[m].tolist() for ids, m in zip(out["completion_ids"], mask)], skip_special_tokens=True)
    rewards = torch.tensor(digit_reward(texts))  # what TRL scored, recomputed by hand
    L = mask.sum(1)
    t = torch.arange(mask.size(1))
    expected = torch.where(mask, rewards[:, None] * 0.5 ** (L[:, None] - 1 - t).clamp(min=0), 0.0)
    torch.testing.assert_close(out["advantages"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["ppo_returns"], expected)  # G = A + V with V = 0
    assert torch.equal(out["ppo_values"], torch.zeros_like(out["ppo_values"]))


def test_first_step_loss_equals_a_hand_computed_ppo_loss(tmp_path):
    # uniform credit, bnpo: at the first step π = π_old, so the ratio is 1 and the clipped policy loss
    # is −Σ_t A_t / Σ_t 1 over valid tokens; the value loss is ½·mean((V − G)²) with V = 0.
    trainer = make_trainer(tmp_path, vf_coef=0.5)
    out = generation_batch(trainer)
    mask = out["completion_mask"].float()
    A, G = out["advantages"], out["ppo_returns"]
    expected = -(A * mask).sum() / mask.sum() + 0.5 * 0.5 * (G ** 2 * mask).sum() / mask.sum()
    loss = trainer._compute_loss(trainer.model, out)
    torch.testing.assert_close(loss.detach(), expected.float(), atol=1e-5, rtol=1e-5)


def test_coupled_credit_multiplies_the_gae_advantages(tmp_path):
    trainer = make_trainer(tmp_path, credit_strategy="coupled")
    out = generation_batch(trainer)
    assert "credit_row" in out  # the default layout: γ rides on the loss forward
    gae_adv = out["advantages"].clone()
    trainer._compute_loss(trainer.model, out)
    gamma = trainer.last_credit["gamma"]
    assert (gamma[trainer.last_credit["mask"]] > 1).any()
    torch.testing.assert_close(out["advantages"], gamma * gae_adv)


def test_value_loss_falls_on_a_fixed_batch(tmp_path):
    trainer = make_trainer(tmp_path)
    out = generation_batch(trainer)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    am = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    mask, G = out["completion_mask"].float(), out["ppo_returns"]
    params = [p for _, p in trainer.critic.named_parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    seen = []
    for _ in range(8):
        v = trainer.critic.values(ids, am, out["completion_ids"].size(1))
        loss = 0.5 * ((v - G) ** 2 * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(loss.item())
    assert seen[-1] < 0.5 * seen[0] and min(seen[1:4]) < seen[0], seen


def test_each_loss_moves_only_its_own_adapter_and_the_base_never(tmp_path):
    trainer = make_trainer(tmp_path)
    out = generation_batch(trainer)
    model = trainer.model
    named = dict(model.named_parameters())
    base = [n for n, p in named.items() if "lora_" not in n and "rlattn_value_head" not in n]
    assert not any(named[n].requires_grad for n in base)

    def grads(vf_coef, policy_scale):
        trainer.args.vf_coef = vf_coef
        model.zero_grad(set_to_none=True)
        batch = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in out.items()}
        batch["advantages"] = batch["advantages"] * policy_scale
        (trainer._compute_loss(model, batch)).backward()
        return {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}

    policy_only = grads(vf_coef=0.0, policy_scale=1.0)
    assert policy_only and all(".default." in n for n in policy_only), policy_only
    value_only = grads(vf_coef=1.0, policy_scale=0.0)
    assert value_only and all(".critic." in n or "rlattn_value_head" in n for n in value_only), value_only
    assert any("rlattn_value_head" in n for n in value_only)


def test_value_backward_split_gives_the_gradients_of_the_summed_loss(tmp_path):
    # split_value_backward frees the critic's graph before the policy's forward (peak memory); the
    # loss it returns must have the same value and give every parameter the same gradient as
    # backward through policy loss + vf_coef * value loss in one graph. GA 2: the 1/2 scaling too.
    trainer = make_trainer(tmp_path, vf_coef=0.7)
    out = generation_batch(trainer)
    trainer.current_gradient_accumulation_steps = 2
    out["advantages"] = out["advantages"] + 0.3  # a policy gradient too
    named = dict(trainer.model.named_parameters())

    def run(split):
        trainer.split_value_backward = split
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(trainer.model, {k: (v.clone() if torch.is_tensor(v) else v) for k, v in out.items()})
        (loss * 0.5).backward()  # a scaling applied after the fact, as the Trainer may
        return loss.detach(), {n: p.grad.clone() for n, p in named.items() if p.grad is not None}

    joint_loss, joint = run(False)
    split_loss, split = run(True)
    torch.testing.assert_close(split_loss, joint_loss, atol=1e-6, rtol=1e-6)
    assert split.keys() == joint.keys() and any(".critic." in n for n in split) and any(".default." in n for n in split)
    for n in joint:
        torch.testing.assert_close(split[n], joint[n], atol=1e-6, rtol=1e-5, msg=n)


def test_merged_lora_rollouts_copy_the_policy_without_the_critic(tmp_path):
    # rollout_merge_lora copies the policy's weights into a plain model: the critic's value head and
    # adapter must stay out of it (they made load_state_dict fail), and stay on the policy after.
    from rlattn.rollouts import resolve_rollout

    model, tok = tiny_model("llama", num_layers=3, seed=0)
    args = make_args(tmp_path, rollout_merge_lora=True)
    trainer = AttnCreditPPOTrainer(model=model, reward_funcs=[digit_reward], args=args, train_dataset=toy_dataset(),
                                   processing_class=tok, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                                   rollout_func=resolve_rollout(args))
    out = generation_batch(trainer)
    assert out["completion_ids"].shape[0] == 4 and torch.isfinite(out["advantages"]).all()
    merged = trainer.rollout_func.backend.generator  # the plain copy: W + the policy's LoRA delta only
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    am = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=am).logits,
                                   trainer.model(input_ids=ids, attention_mask=am).logits, atol=1e-5, rtol=1e-4)
    assert any("rlattn_value_head" in n for n, _ in trainer.model.named_parameters())


def _train(tmp_path, max_steps, resume=None, **kw):
    trainer = make_trainer(tmp_path, max_steps=max_steps, save_strategy="steps", save_steps=2, seed=3, lr_scheduler_type="constant",
                           credit_strategy="coupled", **kw)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_is_exact_for_policy_and_critic(tmp_path):
    full = _train(tmp_path / "full", 4)
    _train(tmp_path / "half", 2)
    ckpt = tmp_path / "half" / "checkpoint-2"
    assert (ckpt / "critic.safetensors").is_file() and (ckpt / "optimizer.pt").is_file()
    resumed = _train(tmp_path / "half", 4, resume=str(ckpt))
    a = {h["step"]: h["loss"] for h in full.state.log_history if "loss" in h}
    b = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    assert [b[s] for s in (3, 4)] == [a[s] for s in (3, 4)], (a, b)
    for (n1, p1), (n2, p2) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_separate_critic_for_full_fine_tuning(tmp_path):
    critic, _ = tiny_model("llama", num_layers=2, seed=1)
    model, tok = tiny_model("llama", num_layers=3, seed=0)
    trainer = AttnCreditPPOTrainer(model=model, reward_funcs=[digit_reward], args=make_args(tmp_path, max_steps=1),
                                   train_dataset=toy_dataset(), processing_class=tok, critic_model=critic)
    trainer.train()
    assert any("rlattn_critic" in n for n, _ in trainer.critic.named_parameters())
    trainer.save_model(str(tmp_path / "saved"))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert not any("rlattn" in k for k in saved)  # the policy's file holds the policy alone
    assert (tmp_path / "saved" / "critic.safetensors").is_file()


@pytest.mark.parametrize("kw, key", [(dict(ppo_lambda=1.5), "ppo_lambda=1.5"), (dict(ppo_gamma=-0.1), "ppo_gamma=-0.1"),
                                     (dict(vf_coef=-1.0), "vf_coef=-1.0"), (dict(dynamic_sampling=True), "dynamic_sampling=True"),
                                     (dict(critic_model_name_or_path="/no/such/critic"), "critic_model_name_or_path='/no/such/critic'")])
def test_bad_config_fails_naming_the_key(tmp_path, kw, key):
    with pytest.raises(ValueError, match=key.replace("(", r"\(")):
        make_args(tmp_path, **kw)


def test_lora_critic_refuses_gradient_checkpointing(tmp_path):
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        make_trainer(tmp_path, gradient_checkpointing=True)


def _run_script(tmp_path, *extra, launcher=None):
    out = tmp_path / "run"
    cmd = (launcher or [sys.executable]) + [str(ROOT / "scripts" / "ppo.py"), str(ROOT / "recipes" / "ppo_anchor_credit.yaml"),
           "--model_name_or_path", "tiny:llama-h32-l2", "--dtype", "float32", "--bf16", "false", "--dataset_limit", "16",
           "--reward_funcs", "rlattn.testing:digit_reward", "--reward_weights", "1.0", "--max_completion_length", "12",
           "--per_device_train_batch_size", "4", "--num_generations", "2", "--attn_fai_horizon", "2", "8",
           "--output_dir", str(out), "--save_strategy", "no", "--logging_steps", "1", *extra]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRL_EXPERIMENTAL_SILENCE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return out, [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_script_runs_and_saves_both_adapters(tmp_path):
    out, logs = _run_script(tmp_path, "--max_steps", "2")
    steps = [l for l in logs if "loss" in l]
    assert len(steps) == 2 and all(math.isfinite(l["loss"]) for l in steps)
    assert all(k in steps[0] for k in ("ppo/value_loss", "ppo/explained_variance", "ppo/return_mean", "credit/gamma_mean"))
    assert (out / "adapter_config.json").is_file() and (out / "critic.safetensors").is_file()


@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "recipes/accelerate_configs/cpu_2proc.yaml")]
    out, logs = _run_script(tmp_path, "--max_steps", "2", "--per_device_train_batch_size", "2", launcher=launcher)
    steps = [l for l in logs if "loss" in l]
    assert len(steps) == 2 and all(math.isfinite(l["loss"]) for l in steps)
