"""AttnCreditGRPOTrainer on a tiny random model: exactness against TRL, credit paths, refusals."""

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from rlattn.config import AttnCreditConfig
from rlattn.testing import digit_reward, tiny_model
from rlattn.trainer import AttnCreditGRPOTrainer


def toy_dataset(n=8):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i)} for i in range(n)]
    )


def base_kwargs(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=24,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        beta=0.0,
        temperature=1.0,
        attn_fai_horizon=[2, 8],
        attn_window=4,
        credit_log_samples=2,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return base


def make_args(tmp_path, **kw):
    return AttnCreditConfig(**base_kwargs(tmp_path, **kw))


def train(tmp_path, arch="llama", peft_config=None, **kw):
    model, tok = tiny_model(arch, num_layers=3, seed=0)
    args = make_args(tmp_path, **kw)
    trainer = AttnCreditGRPOTrainer(
        model=model, reward_funcs=[digit_reward], args=args, train_dataset=toy_dataset(), processing_class=tok, peft_config=peft_config
    )
    trainer.train()
    return trainer


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("compact", [False, True], ids=["full_head", "compact_head"])
def test_uniform_reproduces_trl_exactly(tmp_path, compact):
    """Bit-exact against TRL. With ``compact_lm_head`` (the default) rlattn's passes take TRL's own
    compact LM-head path (rlattn/compact_head.py), so the reference runs it too."""
    from trl import GRPOConfig, GRPOTrainer

    from rlattn.compact_head import compact_cpu_lm_head

    ours = train(tmp_path / "ours", credit_strategy="uniform", compact_lm_head=compact)
    model, tok = tiny_model("llama", num_layers=3, seed=0)
    kwargs = base_kwargs(tmp_path / "trl")
    plain_args = GRPOConfig(**{k: v for k, v in kwargs.items() if not k.startswith(("credit_", "attn_"))})
    ref = GRPOTrainer(model=model, reward_funcs=[digit_reward], args=plain_args, train_dataset=toy_dataset(), processing_class=tok)
    with compact_cpu_lm_head(enabled=compact):
        ref.train()
    assert losses(ours) == losses(ref) and len(losses(ref)) == 2
    for (n1, p1), (n2, p2) in zip(ours.model.named_parameters(), ref.model.named_parameters()):
        assert torch.equal(p1, p2), f"parameter {n1} differs after training"


def test_coupled_changes_advantages_and_logs_credit(tmp_path):
    trainer = train(tmp_path, credit_strategy="coupled")
    credit = trainer.last_credit
    mask = credit["mask"]
    gamma = credit["gamma"]
    assert (gamma[mask] >= 1).all() and (gamma[mask] > 1).any()
    assert not credit["piggybacked"]  # num_iterations=1, aligned steps: TRL runs no old-logp pass
    logged = {k for h in trainer.state.log_history for k in h}
    for key in ("credit/gamma_mean", "credit/anchor_frac", "credit/preplan_frac", "credit/stats_time_frac"):
        assert key in logged, key
    records = [json.loads(l) for l in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert records and all(len(r["gamma"]) == len(r["completion_ids"]) == len(r["waad"]) for r in records)
    assert all(isinstance(r["rewards"]["digit_reward"], float) for r in records)
    assert all(math.isfinite(l) for l in losses(trainer))


def test_piggyback_in_old_logp_pass_equals_early_exit(tmp_path):
    # num_iterations=2 makes TRL compute old log-probs in a no-grad pass: the statistics ride along
    trainer = train(tmp_path, credit_strategy="global_anchor", num_iterations=2, max_steps=1)
    assert trainer.last_credit["piggybacked"]
    assert all(math.isfinite(l) for l in losses(trainer))
    # The step above changed the weights, so compare against the early-exit engine on a trainer
    # that has generated one batch but not stepped: same weights for both paths.
    model, tok = tiny_model("llama", num_layers=3, seed=0)
    args = make_args(tmp_path / "b", credit_strategy="global_anchor", num_iterations=2)
    t2 = AttnCreditGRPOTrainer(model=model, reward_funcs=[digit_reward], args=args, train_dataset=toy_dataset(), processing_class=tok)
    batch = [toy_dataset()[i] for i in range(4)]
    out = t2._generate_and_score_completions(batch)
    assert t2.last_credit["piggybacked"]
    ref_waad, ref_fai = t2._early_exit_stats(out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"])
    P = out["prompt_ids"].size(1)
    m = t2.last_credit["mask"]
    torch.testing.assert_close(t2.last_credit["waad"][m], ref_waad[:, P:][m], atol=1e-5, rtol=0)
    torch.testing.assert_close(t2.last_credit["fai"], ref_fai[:, P:], atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo", "bnpo", "grpo"])
def test_loss_types_take_token_advantages(tmp_path, loss_type):
    trainer = train(tmp_path, credit_strategy="local_chunk", loss_type=loss_type, max_steps=1)
    assert trainer.last_credit["gamma"].shape == trainer.last_credit["mask"].shape
    assert all(math.isfinite(l) for l in losses(trainer))


def test_bf16_training_with_credit(tmp_path):
    # keep: bf16 autocast even on a CPU without native bf16 kernels (cpu_precision auto would turn it off there)
    trainer = train(tmp_path, credit_strategy="coupled", bf16=True, cpu_precision="keep", max_steps=1)
    assert trainer.args.bf16 and trainer.args.cpu_precision_fallback is None
    assert trainer.last_credit["gamma"].dtype == torch.float32
    assert all(math.isfinite(l) for l in losses(trainer))


def test_lora_and_gradient_accumulation_and_baselines(tmp_path):
    from peft import LoraConfig

    trainer = train(
        tmp_path / "lora", credit_strategy="random", peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        gradient_accumulation_steps=2, per_device_train_batch_size=2, max_steps=1,
    )
    assert all(math.isfinite(l) for l in losses(trainer))
    trainer = train(tmp_path / "ent", credit_strategy="high_entropy", max_steps=1)
    g, m = trainer.last_credit["gamma"], trainer.last_credit["mask"]
    assert set(torch.unique(g[m]).tolist()) <= {1.0, 1.5}


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(loss_type="vespo", importance_sampling_level="token"), "loss_type='vespo'"),
        (dict(credit_strategy="nope"), "nope"),
    ],
)
def test_refuses_unsupported_settings(tmp_path, kw, message):
    model, tok = tiny_model("llama", num_layers=2)
    with pytest.raises(ValueError, match=message):
        args = make_args(tmp_path, **kw)
        AttnCreditGRPOTrainer(model=model, reward_funcs=[digit_reward], args=args, train_dataset=toy_dataset(), processing_class=tok)


@pytest.mark.parametrize("kw, key", [(dict(credit_sign="up"), "credit_sign"), (dict(attn_window=0), "attn_window")])
def test_bad_config_values_name_the_yaml_key(tmp_path, kw, key):
    with pytest.raises(ValueError, match=key):
        make_args(tmp_path, **kw)
