"""Completions too short for FAI: the attention strategies say so instead of silently doing nothing (#20).

FAI[s] averages over the response queries t with H_lo ≤ t − s ≤ H_hi. With the default horizon
[10, 100] and ``max_completion_length`` 8 no token has one, so ``coupled`` and ``global_anchor``
select no anchor and γ = 1 on every token: the statistics pass cannot change anything. The trainer
warns once (naming ``attn_fai_horizon`` and the fix), counts ``credit/inert``, and runs no capture
at all. Before cbd40e2 it ran the statistics pass every batch and trained as plain GRPO without a
word. With ``attn_fai_horizon: [1, 100]`` the same run has anchors again.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from datasets import Dataset

import rlattn.credit.capture as capture_module
import rlattn.trainer as trainer_module
from rlattn.config import AttnCreditConfig
from rlattn.testing import digit_reward, tiny_model
from rlattn.trainer import AttnCreditGRPOTrainer


def toy_dataset(n=8):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i)} for i in range(n)]
    )


@pytest.fixture
def captures(monkeypatch):
    """Count every q/k capture, the trainer's own and compute_attention_stats' (run_captured)."""
    calls = []
    real = capture_module.capture_qk

    def counting(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("layers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_module, "capture_qk", counting)
    if hasattr(trainer_module, "capture_qk"):
        monkeypatch.setattr(trainer_module, "capture_qk", counting)
    return calls


def train(tmp_path, strategy, horizon=None, **kw):
    model, tok = tiny_model("llama", num_layers=3, seed=0)
    args = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                seed=0, beta=0.0, use_cpu=True, dataloader_num_workers=0, attn_window=4, credit_strategy=strategy, **kw)
    if horizon is not None:
        args["attn_fai_horizon"] = horizon
    trainer = AttnCreditGRPOTrainer(model=model, reward_funcs=[digit_reward], args=AttnCreditConfig(**args),
                                    train_dataset=toy_dataset(), processing_class=tok)
    trainer.train()
    return trainer


def _logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


# where the statistics would come from: the loss forward (TRL's default layout), rlattn's extra pass
# (credit_fused: false), TRL's old-log-prob pass (num_iterations 2; one generation batch in 2 steps)
LAYOUTS = {"fused": {}, "extra": {"credit_fused": False}, "piggyback": {"num_iterations": 2}}
@pytest.mark.parametrize("strategy", ["coupled", "global_anchor"])
@pytest.mark.parametrize("layout", ["fused", "extra", "piggyback"])
def test_short_completions_with_the_default_horizon_are_inert_and_said_so(tmp_path, strategy, layout, captures, caplog):
    with caplog.at_level(logging.WARNING, logger="rlattn.trainer"):
        trainer = train(tmp_path, strategy, **LAYOUTS[layout])  # default attn_fai_horizon [10, 100], completions ≤ 8 tokens
    assert trainer.stats_config.fai_horizon == (10, 100)
    warnings = [r.getMessage() for r in caplog.records if "attn_fai_horizon" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not once per batch
    assert "attn_fai_horizon: [1, 100]" in warnings[0] and "max_completion_length" in warnings[0]
    inert = _logged(trainer, "credit/inert")
    assert inert and set(inert) == {1.0}
    assert captures == []  # the statistics pass was skipped: no capture at all
    credit = trainer.last_credit
    assert torch.equal(credit["gamma"][credit["mask"]], torch.ones(int(credit["mask"].sum())))
    assert all(math.isfinite(l) for l in _logged(trainer, "loss"))


@pytest.mark.parametrize("strategy", ["coupled", "global_anchor"])
@pytest.mark.parametrize("layout", ["fused", "piggyback"])
def test_a_short_horizon_makes_them_act_again(tmp_path, strategy, layout, captures, caplog):
    with caplog.at_level(logging.WARNING, logger="rlattn.trainer"):
        trainer = train(tmp_path, strategy, horizon=[1, 100], **LAYOUTS[layout])
    assert not [r for r in caplog.records if "attn_fai_horizon" in r.getMessage()]
    inert = _logged(trainer, "credit/inert")
    assert inert and set(inert) == {0.0}
    assert captures  # the statistics were taken
    credit = trainer.last_credit
    assert (credit["gamma"][credit["mask"]] > 1).any()
